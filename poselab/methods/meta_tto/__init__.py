"""Test-time optimisation inside training, with dual networks, for human mesh recovery.

"Incorporating Test-Time Optimization into Training with Dual Networks for Human Mesh Recovery"
(Nie et al., NeurIPS 2024). A regressor ``f_w`` (:class:`poselab.models.mesh.MeshRegressor`) maps a
person crop to Anny pose, shape and a crop camera. Its baseline at test time is EFT-style
test-time optimisation (TTO): for one image with detected 2D keypoints, a few gradient steps on
the *network's weights* for the reprojection error, then predict (:func:`test_time_optimise`).

The method trains ``w`` so that it is a good starting point for that optimisation (MAML):

1. **Inner step** (:func:`inner_step`), per training sample ``i``:
   ``w_i' = w - alpha grad_w L_test(w; x_i)``, the test-time step on that sample alone.
2. **Outer loss** (:func:`meta_loss`): the training loss with ground truth on the adapted weights,
   ``mean_i L_train(w_i'; x_i, y_i)``, differentiated through the inner step (second order by
   default; ``first_order=True`` drops the inner gradient's own dependence on ``w``).
3. **Dual networks**: an auxiliary regressor ``f_u`` (same architecture, own weights) predicts
   pseudo ground truth, and the test-time loss becomes
   ``L_test = L_2D + lambda || f_w'(x) - f_u(x) ||^2`` (:func:`test_loss`), closer to the training
   loss, which compares parameters with real ground truth.

Everything is in the **camera frame** (metres; crop pixels for 2D): the ground truth's pose
parameters are :func:`poselab.data.body.to_camera_frame` of the world-frame ones, a prediction's are
``to_pose_parameters(pred, camera_translation(pred.camera, focal, center, S))``, joints come from
:meth:`poselab.data.body.BodyModel.skeleton` (forward kinematics, no skinning) and 2D joints from
:func:`poselab.data.cameras.project_points`.

Vectorisation (the per-sample inner loop is the expensive part): every sample gets its own copy
of the weights, ``p.expand(B, *p.shape)`` (a view: no copy, and gradients flow back to the shared
``p``); the predictions are ``vmap(functional_call)`` over (copies, images); the per-sample
gradients are ``torch.autograd.grad`` of the *sum* of the per-sample losses with respect to the
copies (sample ``b``'s loss depends on copy ``b`` only, so slice ``b`` of that gradient is sample
``b``'s gradient). The body model stays outside ``vmap``, natively batched over ``B`` (Anny's
phenotype code cannot be vmapped over batched phenotypes). :func:`inner_step_loop` and
:func:`meta_loss_loop` do the same with a Python loop over samples, as references.

Choices (our reading of the paper):

* **Both networks are trained.** ``f_u`` must learn to predict pseudo ground truth: its own
  training loss on its predictions is added to the meta-loss (the paper's figure shows ground-truth
  meshes supervising the outer estimate and pseudo meshes supervising the inner one, and updates
  both ``w`` and ``u``). The pseudo targets are *not* detached inside the meta-loss, so with second
  order ``u`` also receives the gradient of the outer loss through the inner step (``w_i'`` depends
  on ``f_u(x_i)``); with ``first_order=True`` that path is cut and ``u`` learns from its own loss only.
* **Norm layers are frozen** in the inner step and at test time (EFT): GroupNorm's affine
  parameters keep their shared values (:func:`norm_parameter_names`; ``frozen="norm"``).
* **Visibility.** Dropped detections (:func:`poselab.data.cameras.detector_noise` collapses them onto
  the pelvis) are left out of the reprojection term, as EFT weights OpenPose keypoints by their
  confidence (a missed joint has confidence 0).
* **Losses are means** (per sample): MSE over the entries of rotation matrices, phenotypes, 3D joint
  coordinates (root-relative, m^2) and 2D joint coordinates divided by the crop side ``S``; the
  weights of :class:`LossWeights` follow SPIN's (keypoints 5, pose 1) with SPIN's ``[-1, 1]`` crop
  coordinates converted to ours (``x 4``). The auxiliary term of the test loss is the mean squared
  difference of the 195 regressed numbers (31 6D rotations, 6 phenotypes, ``(s, tx, ty)``).
* **Test-time optimisation** keeps the auxiliary network fixed: its predictions are computed once
  and are constants of the test loss.
"""

from __future__ import annotations

from poselab.methods.meta_tto.settings import TTO_OPTIMIZERS, LossFn, DetectorNoise, DETECTOR_NOISE, LossWeights, MetaTTOConfig
from poselab.methods.meta_tto.targets import MeshTargets, mesh_targets, targets_as_prediction
from poselab.methods.meta_tto.losses import mesh_joints, mesh_vertices, training_terms, training_loss, test_loss
from poselab.methods.meta_tto.stacked import norm_parameter_names, predict_stacked, inner_step, inner_step_loop
from poselab.methods.meta_tto.meta import meta_loss, meta_loss_loop, meta_step
from poselab.methods.meta_tto.tto import test_time_optimise
from poselab.methods.meta_tto.evaluation import evaluate_mesh
from poselab.methods.meta_tto.training import predict_images, train_mesh

__all__ = [
    "TTO_OPTIMIZERS",
    "LossFn",
    "DetectorNoise",
    "DETECTOR_NOISE",
    "LossWeights",
    "MeshTargets",
    "MetaTTOConfig",
    "mesh_targets",
    "targets_as_prediction",
    "mesh_joints",
    "mesh_vertices",
    "training_terms",
    "training_loss",
    "test_loss",
    "norm_parameter_names",
    "predict_stacked",
    "inner_step",
    "inner_step_loop",
    "meta_loss",
    "meta_loss_loop",
    "meta_step",
    "test_time_optimise",
    "evaluate_mesh",
    "predict_images",
    "train_mesh",
]
