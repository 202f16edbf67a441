"""Loading Hugging Face VLMs and building the tiny Mllama."""
