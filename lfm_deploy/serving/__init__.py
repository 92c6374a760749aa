"""Serving beyond one process: a Triton Inference Server model repository from an export
(`triton.write_triton_repository`), and Ray batch jobs and an HTTP service (`ray_batch`,
`ray_serve`, optional extra). The in-process runtime is `lfm_deploy.runtime`."""
