"""The demo's sampler names -> k-diffusion sampling functions (torch-free, so `--help` and argument checks need no
torch)."""

SAMPLERS = {
    "euler": "sample_euler",
    "euler_a": "sample_euler_ancestral",
    "dpmpp_2m": "sample_dpmpp_2m",
    "heun": "sample_heun",
    "lms": "sample_lms",
}
