"""One job from its input to its result: the runner (validate, fetch the image, the GPU child, upload), the job
modes and capacity this worker takes, the result and where videos are stored."""
