"""What strangers send in, checked at the edge: request bodies (body_guard), job inputs (job_input), input images
(image: download; image_decode: the decoder process) and outbound connections (outbound, addresses). Shared with
the orchestrator stub."""
