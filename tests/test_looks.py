"""Tests for poselab.data.looks: sampling, clothing, backgrounds, occluders, post-processing, compositing."""

import dataclasses
import math

import pytest
import torch

from poselab.data.looks import (
    LOOKS,
    PATTERNS,
    REGIONS,
    TEXTURES,
    LookParams,
    backgrounds,
    clothing_colours,
    composite,
    lighting,
    occluders,
    post_process,
    sample_look,
)

SIZE = (48, 64)  # (H, W): not square, to catch axis mix-ups


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _fake_body(per_region=12, batch=1, seed=0):
    """A small stand-in for the body mesh: rest vertices (batch, V, 3) in Anny's frame
    (Z up, metres, facing -Y) placed in a box per region, and their region ids (V,)."""
    boxes = {  # region -> (x range, z range)
        "head": ((-0.10, 0.10), (1.50, 1.75)),
        "hands": ((0.25, 0.35), (0.80, 0.90)),
        "arms": ((0.18, 0.30), (0.90, 1.45)),
        "torso": ((-0.17, 0.17), (1.00, 1.45)),
        "legs": ((-0.15, 0.15), (0.10, 1.00)),
        "feet": ((-0.15, 0.15), (0.00, 0.10)),
    }
    g = _gen(seed)
    points, regions = [], []
    for r, name in enumerate(REGIONS):
        (x0, x1), (z0, z1) = boxes[name]
        u = torch.rand(per_region, 3, generator=g, dtype=torch.float64)
        points.append(torch.stack([x0 + (x1 - x0) * u[:, 0], 0.2 * (u[:, 1] - 0.5), z0 + (z1 - z0) * u[:, 2]], -1))
        regions.append(torch.full((per_region,), r, dtype=torch.long))
    rest = torch.cat(points).float()
    return rest.expand(batch, -1, -1).clone(), torch.cat(regions)


def _laplacian_energy(images):
    """Mean absolute discrete Laplacian over interior pixels: high-frequency energy."""
    lap = (
        4 * images[..., 1:-1, 1:-1]
        - images[..., :-2, 1:-1]
        - images[..., 2:, 1:-1]
        - images[..., 1:-1, :-2]
        - images[..., 1:-1, 2:]
    )
    return lap.abs().mean().item()


def _assert_params_equal(a: LookParams, b: LookParams):
    assert a.look == b.look
    for f in dataclasses.fields(LookParams):
        if f.name != "look":
            assert torch.equal(getattr(a, f.name), getattr(b, f.name)), f.name


# --- sampling ------------------------------------------------------------------------------


@pytest.mark.parametrize("look", LOOKS)
def test_sampling_reproducible_and_seed_dependent(look):
    a, b, c = sample_look(look, 8, _gen(1)), sample_look(look, 8, _gen(1)), sample_look(look, 8, _gen(2))
    _assert_params_equal(a, b)
    assert not torch.equal(a.surface_colours, c.surface_colours)
    assert not torch.equal(a.seed, c.seed)
    # ... and so are the images made from them.
    assert torch.equal(backgrounds(a, SIZE), backgrounds(b, SIZE))
    assert not torch.equal(backgrounds(a, SIZE), backgrounds(c, SIZE))
    rest, regions = _fake_body(batch=8)
    assert torch.equal(clothing_colours(a, rest, regions), clothing_colours(b, rest, regions))
    assert not torch.equal(clothing_colours(a, rest, regions), clothing_colours(c, rest, regions))


@pytest.mark.parametrize("look", LOOKS)
def test_sampled_values_in_range(look):
    p = sample_look(look, 64, _gen(3))
    assert len(p) == 64 and p.look == look and p.dtype == torch.float32
    for name in ("skin", "hair", "top", "bottom", "shoes", "surface_colours", "occluder_colours"):
        v = getattr(p, name)
        assert v.min() >= 0 and v.max() <= 1, name
    assert ((p.surface_texture >= 0) & (p.surface_texture < len(TEXTURES))).all()
    assert ((p.pattern >= 0) & (p.pattern < len(PATTERNS))).all()
    torch.testing.assert_close(p.light_dir.norm(dim=-1), torch.ones(64))
    assert (p.light_dir[:, 2] < 0).all()  # light comes from the camera's side
    assert (p.ambient > 0).all() and (p.diffuse > 0).all() and (p.blur_sigma >= 0).all() and (p.noise_std >= 0).all()
    assert ((p.seed >= 0) & (p.seed < 2**31)).all()


def test_synthetic_is_plain_and_realistic_varied():
    s, r = sample_look("synthetic", 200, _gen(4)), sample_look("realistic", 200, _gen(4))
    # Synthetic: flat garments, no clutter, no occluders, neutral camera, near-frontal light.
    assert (s.pattern == PATTERNS.index("flat")).all() and (s.shade_variation == 0).all()
    assert s.shape_kind.shape[1] == 0 and not s.occluder_present.any()
    assert (s.exposure == 0).all() and (s.colour_gain == 1).all() and (s.blur_sigma == 0).all()
    assert (s.noise_std == 0).all()
    assert (s.light_dir[:, 2] < -0.9).all()
    # Realistic: every pattern, several textures, some occluders and blur, varied light.
    assert set(r.pattern.unique().tolist()) == set(range(len(PATTERNS)))
    assert len(r.surface_texture.unique()) == len(TEXTURES)
    assert 0.3 < r.occluder_present[:, 0].float().mean() < 0.7
    assert (r.blur_sigma > 0).float().mean() > 0.5 and (r.noise_std > 0).all()
    assert r.light_dir[:, 2].max() > -0.7  # some strongly oblique lights
    assert r.skin.std(0).mean() > s.skin.std(0).mean()  # wider range of skin tones


def test_params_slicing_and_to():
    p = sample_look("realistic", 6, _gen(5))
    q = p[2:4]
    assert len(q) == 2 and q.look == "realistic"
    assert torch.equal(q.seed, p.seed[2:4])
    assert len(p[0]) == 1 and torch.equal(p[-1].seed, p.seed[-1:])
    with pytest.raises(IndexError):
        p[6]
    d = p.to(dtype=torch.float64)
    assert d.dtype == torch.float64 and d.pattern.dtype == torch.long and d.seed.dtype == torch.int64
    assert backgrounds(d, SIZE).dtype == torch.float64
    # Images depend on their own parameters only, not on the rest of the batch.
    torch.testing.assert_close(backgrounds(q, SIZE), backgrounds(p, SIZE)[2:4])
    torch.testing.assert_close(occluders(q, SIZE)[0], occluders(p, SIZE)[0][2:4])
    images = torch.rand(6, 3, *SIZE, generator=_gen(6))
    torch.testing.assert_close(post_process(q, images[2:4]), post_process(p, images)[2:4])


# --- clothing ------------------------------------------------------------------------------


def test_synthetic_clothing_flat_per_region():
    p = sample_look("synthetic", 5, _gen(7))
    rest, regions = _fake_body(batch=5)
    colours = clothing_colours(p, rest, regions)
    assert colours.shape == (5, len(regions), 3) and colours.dtype == rest.dtype
    per_region = {}
    for r, name in enumerate(REGIONS):
        c = colours[:, regions == r]
        assert torch.equal(c, c[:, :1].expand_as(c)), name  # exactly constant within the region
        per_region[name] = c[:, 0]
    assert torch.equal(per_region["head"], p.skin) and torch.equal(per_region["hands"], p.skin)
    assert torch.equal(per_region["arms"], per_region["torso"]) and torch.equal(per_region["torso"], p.top[:, 0])
    assert torch.equal(per_region["legs"], p.bottom[:, 0]) and torch.equal(per_region["feet"], p.shoes)


def test_realistic_clothing_varies_within_regions():
    n = 32
    p = sample_look("realistic", n, _gen(8))
    rest, regions = _fake_body(per_region=40, batch=n)
    colours = clothing_colours(p, rest, regions)
    assert colours.min() >= 0 and colours.max() <= 1
    torso = colours[:, regions == REGIONS.index("torso")]
    assert (torso.std(dim=1).amax(dim=-1) > 1e-3).all()  # every image's torso varies
    patterned = p.pattern[:, 0] != PATTERNS.index("flat")
    assert torso[patterned].std(dim=1).mean() > 3 * torso[~patterned].std(dim=1).mean()
    # Hair: the topmost head vertex is hair-coloured (up to the brightness variation) unless bald.
    head = colours[:, regions == REGIONS.index("head")]
    top = rest[:, regions == REGIONS.index("head"), 2].argmax(dim=1)
    top_colour = head[torch.arange(n), top]
    hairy = p.hair_length > 0
    ratio = top_colour[hairy] / p.hair[hairy].clamp_min(1e-3)
    assert ((ratio - 1).abs() < p.shade_variation[hairy, None] + 0.02)[p.hair[hairy] > 0.05].all()


def test_clothing_is_a_function_of_each_vertex():
    """Patterns come from the rest positions: permuting vertices permutes colours, and moving
    the body's other vertices leaves a vertex's colour unchanged (away from the head's hair line)."""
    p = sample_look("realistic", 4, _gen(9))
    rest, regions = _fake_body(batch=4)
    colours = clothing_colours(p, rest, regions)
    perm = torch.randperm(len(regions), generator=_gen(10))
    torch.testing.assert_close(clothing_colours(p, rest[:, perm], regions[perm]), colours[:, perm])
    legs = regions == REGIONS.index("legs")
    moved = rest.clone()
    moved[:, legs] += 0.3
    same = ~legs & (regions != REGIONS.index("head"))
    torch.testing.assert_close(clothing_colours(p, moved, regions)[:, same], colours[:, same])


# --- backgrounds -----------------------------------------------------------------------------


def test_backgrounds_plain_vs_cluttered():
    s, r = sample_look("synthetic", 16, _gen(11)), sample_look("realistic", 16, _gen(11))
    bs, br = backgrounds(s, SIZE), backgrounds(r, SIZE)
    for b in (bs, br):
        assert b.shape == (16, 3, *SIZE) and b.dtype == torch.float32
        assert b.min() >= 0 and b.max() <= 1
    es, er = _laplacian_energy(bs), _laplacian_energy(br)
    assert es < 1e-3 and er > 0.05 and er > 100 * es
    # Synthetic: each image is a plain colour or a monotone ramp between its two colours.
    plain = s.surface_texture[:, 0] == TEXTURES.index("flat")
    assert plain.any() and (~plain).any()
    flat_imgs = bs[plain]
    assert torch.equal(flat_imgs, s.surface_colours[plain, 0, 0, :, None, None].expand_as(flat_imgs))
    tv = (bs[:, :, 1:] - bs[:, :, :-1]).abs().mean() + (bs[..., 1:] - bs[..., :-1]).abs().mean()
    assert tv < 0.02
    # Realistic: many distinct colours per image.
    assert all(len(torch.unique(img.reshape(3, -1), dim=1).T) > 200 for img in br[:4])


def test_gradient_background_known_answer():
    """A vertical gradient from black (top) to white (bottom): row i is at (i + 0.5) / H."""
    p = sample_look("synthetic", 1, _gen(12))
    p.surface_texture[:] = TEXTURES.index("gradient")
    p.surface_colours[:, 0, 0] = 0.0
    p.surface_colours[:, 0, 1] = 1.0
    p.gradient_angle[:] = math.pi / 2
    b = backgrounds(p, (4, 3))
    expected = ((torch.arange(4) + 0.5) / 4)[:, None].expand(4, 3)
    torch.testing.assert_close(b[0], expected.expand(3, 4, 3))


def test_backgrounds_resolution_independent():
    """Parameters are in image units: a 2x larger background averaged 2x2 is close to the small one."""
    p = sample_look("realistic", 4, _gen(13))
    p.grain[:] = 0.0
    p.surface_texture[p.surface_texture == TEXTURES.index("grain")] = TEXTURES.index("flat")
    small = backgrounds(p, (32, 40))
    big = torch.nn.functional.avg_pool2d(backgrounds(p, (64, 80)), 2)
    assert (small - big).abs().mean() < 0.05


# --- occluders -------------------------------------------------------------------------------


def test_synthetic_occluders_empty():
    p = sample_look("synthetic", 4, _gen(14))
    rgb, mask = occluders(p, SIZE)
    assert rgb.shape == (4, 3, *SIZE) and mask.shape == (4, *SIZE) and mask.dtype == torch.bool
    assert not mask.any() and not rgb.any()


def test_realistic_occluders_cover_centre():
    n = 300
    p = sample_look("realistic", n, _gen(15))
    rgb, mask = occluders(p, (32, 32))
    assert rgb.min() >= 0 and rgb.max() <= 1
    assert not rgb.permute(0, 2, 3, 1)[~mask].any()  # black where nothing occludes
    has = mask.flatten(1).any(1)
    assert torch.equal(has, p.occluder_present.any(1))  # occluders exist exactly where drawn
    assert 0.35 < has.float().mean() < 0.65
    area = mask[has].float().mean(dim=(1, 2))
    assert 0.03 < area.mean() < 0.3 and area.max() < 0.7
    # Mask centre of mass lies in the middle of the crop, where the person is.
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    m = mask[has].float()
    cy = (m * ys).sum(dim=(1, 2)) / m.sum(dim=(1, 2))
    cx = (m * xs).sum(dim=(1, 2)) / m.sum(dim=(1, 2))
    assert ((cy > 6) & (cy < 26) & (cx > 6) & (cx < 26)).all()


def test_occluder_shape_known_answer():
    """One axis-aligned rectangle at the centre, half-extents 0.25 x 0.125 image heights."""
    p = sample_look("realistic", 1, _gen(16))
    p.occluder_present[:] = torch.tensor([[True, False]])
    p.occluder_kind[:] = 0
    p.occluder_centre[:] = 0.5
    p.occluder_size[:, 0] = torch.tensor([0.25, 0.125])
    p.occluder_angle[:] = 0.0
    p.occluder_colours[:, 0] = torch.tensor([0.2, 0.4, 0.6])  # flat colour pair
    _, mask = occluders(p, (8, 8))
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[3:5, 2:6] = True  # rows with |y - 0.5| <= 0.125, columns with |x - 0.5| <= 0.25
    assert torch.equal(mask[0], expected)
    p.occluder_angle[:] = math.pi / 2  # rotated a quarter turn: the rectangle stands upright
    _, mask = occluders(p, (8, 8))
    assert torch.equal(mask[0], expected.T)


# --- lighting, post-processing, compositing ---------------------------------------------------


def test_lighting():
    p = sample_look("realistic", 5, _gen(17))
    light_dir, ambient, diffuse = lighting(p)
    assert light_dir.shape == (5, 3) and ambient.shape == (5,) and diffuse.shape == (5,)
    assert torch.equal(light_dir, p.light_dir)


def test_post_process_identity_for_synthetic():
    p = sample_look("synthetic", 3, _gen(18))
    images = torch.rand(3, 3, *SIZE, generator=_gen(19))
    out = post_process(p, images)
    assert torch.equal(out, images)


def test_post_process_range_and_determinism():
    p = sample_look("realistic", 8, _gen(20))
    images = torch.rand(8, 3, *SIZE, generator=_gen(21))
    out = post_process(p, images)
    assert out.shape == images.shape and out.dtype == images.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, post_process(p, images))
    assert not torch.equal(out, images)


def _neutral(n=1):
    p = sample_look("realistic", n, _gen(22))
    p.exposure[:] = 0.0
    p.colour_gain[:] = 1.0
    p.blur_sigma[:] = 0.0
    p.noise_std[:] = 0.0
    return p


def test_post_process_exposure_and_gain():
    p = _neutral()
    images = torch.full((1, 3, 4, 4), 0.3)
    p.exposure[:] = 1.0  # one stop: twice as bright
    torch.testing.assert_close(post_process(p, images), torch.full_like(images, 0.6))
    p.exposure[:] = 2.0
    torch.testing.assert_close(post_process(p, images), torch.ones_like(images))  # clipped
    p.exposure[:] = 0.0
    p.colour_gain[:] = torch.tensor([1.0, 0.5, 2.0])
    torch.testing.assert_close(post_process(p, images)[0, :, 0, 0], torch.tensor([0.3, 0.15, 0.6]))


def test_post_process_blur():
    p = _neutral(2)
    H = 33
    images = torch.full((2, 3, H, H), 0.25, dtype=torch.float64)
    images[1, :, 16, 16] = 1.0  # an impulse in the second image
    p.blur_sigma[:] = torch.tensor([0.05, 1.9 / H])  # in image heights
    out = post_process(p, images)
    torch.testing.assert_close(out[0], images[0])  # a constant image stays constant
    bump = out[1, 0] - 0.25
    torch.testing.assert_close(bump.sum().item(), 0.75)  # energy kept
    r = torch.arange(H) - 16.0
    var = (bump.sum(0) * r**2).sum() / bump.sum()
    # sigma = 1.9 px, sampled at integer taps and cut at 3 sigma (rounded up): the discrete
    # kernel's variance, a little under 1.9 ** 2.
    taps = torch.arange(-6.0, 7.0, dtype=torch.float64)
    w = torch.exp(-0.5 * (taps / 1.9) ** 2)
    torch.testing.assert_close(var, (w * taps**2).sum() / w.sum())
    assert 3.5 < var < 1.9**2
    torch.testing.assert_close(bump, bump.T)  # isotropic


def test_post_process_noise_statistics():
    p = _neutral(4)
    p.noise_std[:] = torch.tensor([0.0, 0.01, 0.03, 0.05])
    images = torch.full((4, 3, 64, 64), 0.5)
    residual = post_process(p, images) - images
    assert torch.equal(residual[0], torch.zeros_like(residual[0]))
    std = residual.flatten(1).std(dim=1)
    torch.testing.assert_close(std[1:], p.noise_std[1:], rtol=0.05, atol=0)
    assert residual[1:].mean().abs() < 2e-3
    assert (residual[1:].flatten(1).abs().amax(1) < 6 * p.noise_std[1:]).all()  # Gaussian tails, no clipping
    # Channels and neighbouring pixels are uncorrelated.
    z = residual[3] / 0.05
    assert (z[0] * z[1]).mean().abs() < 0.05 and (z[:, :, 1:] * z[:, :, :-1]).mean().abs() < 0.05


def test_hash_noise_bounds_and_statistics():
    from poselab.data.looks import _hash_uniform, _unit_interval

    ends = torch.tensor([0, 2**23 - 1])
    for dtype in (torch.float32, torch.float64):
        u = _unit_interval(ends, dtype)
        assert (u > 0).all() and (u < 1).all()  # nothing rounds to 0 or 1
        assert torch.isfinite(torch.erfinv(2 * u - 1)).all()  # so the Gaussian noise stays finite
    seeds = torch.tensor([0, 1, 2**31 - 1])
    u = _hash_uniform(seeds, 2, 50_000, torch.float64)
    assert u.shape == (3, 50_000)
    torch.testing.assert_close(u.mean(1), torch.full((3,), 0.5, dtype=torch.float64), atol=0.005, rtol=0)
    torch.testing.assert_close(u.var(1), torch.full((3,), 1 / 12, dtype=torch.float64), atol=0.002, rtol=0)
    assert (u[0] - u[1]).abs().mean() > 0.3  # neighbouring seeds give unrelated streams
    assert torch.equal(_hash_uniform(seeds[1:2], 2, 100, torch.float64), u[1:2, :100])


def test_post_process_gradient():
    p = _neutral(2).to(dtype=torch.float64)
    p.blur_sigma[:] = torch.tensor([0.1, 0.2])
    p.exposure[:] = torch.tensor([-0.5, 0.3])
    p.noise_std[:] = 0.01
    images = (0.3 + 0.2 * torch.rand(2, 3, 6, 5, dtype=torch.float64, generator=_gen(23))).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: post_process(p, x), (images,))


def test_composite_known_answer():
    bg = torch.tensor([[0.1, 0.2, 0.3]]).expand(3, 3)[None, :, None, :].clone()  # (1, 3, 1, 3)
    person = torch.full((1, 3, 1, 3), 0.5)
    occ = torch.full((1, 3, 1, 3), 0.9)
    pmask = torch.tensor([[[True, True, False]]])
    omask = torch.tensor([[[False, True, True]]])
    out = composite(person, pmask, bg)
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([0.5, 0.5, 0.3]))
    out = composite(person, pmask, bg, occ, omask)
    torch.testing.assert_close(out[0, 1, 0], torch.tensor([0.5, 0.9, 0.9]))
    # Fractional coverage blends.
    out = composite(person, torch.tensor([[[1.0, 0.5, 0.0]]]), bg)
    torch.testing.assert_close(out[0, 2, 0], torch.tensor([0.5, 0.35, 0.3]))


def test_composite_gradient():
    g = _gen(24)
    bg = torch.rand(1, 3, 2, 2, dtype=torch.float64, generator=g)
    person = torch.rand(1, 3, 2, 2, dtype=torch.float64, generator=g).requires_grad_()
    alpha = torch.rand(1, 2, 2, dtype=torch.float64, generator=g).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, a: composite(x, a, bg), (person, alpha))


def test_pipeline_end_to_end():
    """Background, person, occluders and camera together, for both looks."""
    rest, regions = _fake_body(batch=4)
    for look in LOOKS:
        p = sample_look(look, 4, _gen(25))
        colours = clothing_colours(p, rest, regions)
        person = colours[:, :3].mean(1)[:, :, None, None].expand(4, 3, *SIZE)
        pmask = torch.zeros(4, *SIZE, dtype=torch.bool)
        pmask[:, 10:40, 25:40] = True
        image = post_process(p, composite(person, pmask, backgrounds(p, SIZE), *occluders(p, SIZE)))
        assert image.shape == (4, 3, *SIZE) and image.min() >= 0 and image.max() <= 1


# --- bad input --------------------------------------------------------------------------------


def test_bad_sampling_arguments():
    with pytest.raises(ValueError, match="look"):
        sample_look("cartoon", 2, _gen())
    with pytest.raises(ValueError, match="n"):
        sample_look("synthetic", 0, _gen())
    with pytest.raises(TypeError, match="n"):
        sample_look("synthetic", 2.0, _gen())
    with pytest.raises(TypeError, match="generator"):
        sample_look("synthetic", 2, 0)
    with pytest.raises(TypeError, match="dtype"):
        sample_look("synthetic", 2, _gen(), dtype=torch.int64)
    p = sample_look("synthetic", 2, _gen())
    with pytest.raises(ValueError, match="batch size"):
        dataclasses.replace(p, skin=p.skin[:1])
    with pytest.raises(ValueError, match="look"):
        dataclasses.replace(p, look="cartoon")


def test_bad_clothing_arguments():
    p = sample_look("realistic", 2, _gen())
    rest, regions = _fake_body(batch=2)
    with pytest.raises(TypeError, match="params"):
        clothing_colours({"look": "realistic"}, rest, regions)
    with pytest.raises(ValueError, match="rest_vertices"):
        clothing_colours(p, rest[:1], regions)
    with pytest.raises(ValueError, match="rest_vertices"):
        clothing_colours(p, rest[..., :2], regions)
    with pytest.raises(TypeError, match="rest_vertices"):
        clothing_colours(p, rest.long(), regions)
    with pytest.raises(TypeError, match="vertex_regions"):
        clothing_colours(p, rest, regions.float())
    with pytest.raises(ValueError, match="vertex_regions"):
        clothing_colours(p, rest, regions[:-1])
    with pytest.raises(ValueError, match="vertex_regions"):
        clothing_colours(p, rest, regions + 1)


def test_bad_image_arguments():
    p = sample_look("realistic", 2, _gen())
    for bad in ((32,), (0, 32), [32, 32, 3]):
        with pytest.raises(ValueError, match="size"):
            backgrounds(p, bad)
    with pytest.raises(TypeError, match="size"):
        occluders(p, (32.0, 32))
    with pytest.raises(ValueError, match="images"):
        post_process(p, torch.rand(3, 3, 8, 8))
    with pytest.raises(ValueError, match="images"):
        post_process(p, torch.rand(2, 1, 8, 8))
    with pytest.raises(TypeError, match="images"):
        post_process(p, torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    bg, person = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    mask = torch.ones(2, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="person_rgb"):
        composite(person[:, :, :3], mask, bg)
    with pytest.raises(ValueError, match="person_mask"):
        composite(person, mask[:1], bg)
    with pytest.raises(TypeError, match="person_mask"):
        composite(person, mask.long(), bg)
    with pytest.raises(ValueError, match="occluder"):
        composite(person, mask, bg, occluder_rgb=person)


# --- devices ----------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    rest, regions = _fake_body(batch=8)
    for look in LOOKS:
        cpu = sample_look(look, 8, _gen(26))
        gpu = sample_look(look, 8, _gen(26), device="cuda")  # CPU generator: the same numbers
        assert gpu.device.type == "cuda"
        _assert_params_equal(cpu, gpu.to("cpu"))
        b_cpu, b_gpu = backgrounds(cpu, SIZE), backgrounds(gpu, SIZE)
        assert b_gpu.device.type == "cuda"
        assert (b_gpu.cpu() - b_cpu).abs().mean() < 1e-3  # hard texture edges may flip a few pixels
        o_cpu, o_gpu = occluders(cpu, SIZE), occluders(gpu, SIZE)
        assert (o_gpu[1].cpu() != o_cpu[1]).float().mean() < 1e-3
        c_cpu = clothing_colours(cpu, rest, regions)
        c_gpu = clothing_colours(gpu, rest.cuda(), regions.cuda())
        torch.testing.assert_close(c_gpu.cpu(), c_cpu, atol=1e-4, rtol=0)
        out_cpu, out_gpu = post_process(cpu, b_cpu), post_process(gpu, b_cpu.cuda())
        torch.testing.assert_close(out_gpu.cpu(), out_cpu, atol=1e-4, rtol=0)  # same hash noise
        composite(out_gpu, o_gpu[1], out_gpu, *o_gpu)
    with pytest.raises(ValueError, match="device"):
        post_process(sample_look("realistic", 1, _gen(), device="cuda"), torch.rand(1, 3, 4, 4))
