"""Networks of the workbench: the joint image–mask denoiser (and, alongside it, the segmentor)."""
