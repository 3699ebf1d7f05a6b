"""T-SAM outside the web UI: SD models built from the real classes (random or from a checkpoint), a k-diffusion
txt2img pipeline and the demo (`python -m standalone`). For the demo, the tests and the benchmark; the web UI never
imports this package (the method it runs is `lib_align`)."""
