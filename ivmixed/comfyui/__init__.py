"""IV-mixed sampling inside ComfyUI: the nodes of the pack in ``comfyui/ComfyUI-IVMixed``.

The modules here import ComfyUI's own (``comfy``, ``latent_preview``), so they load only inside a running ComfyUI
(or a test that has put ComfyUI on the path). The sampling itself is :func:`ivmixed.sampler.sample_iv_mixed`, fed
with noise-prediction callables made from ComfyUI models (:mod:`.predictors`) over each model's own noise schedule
(:mod:`.schedule`); :mod:`.sampling` runs them the way ComfyUI's samplers run, so AnimateDiff-Evolved's motion
modules, context windows and progress reporting take part as in its own KSampler.
"""
