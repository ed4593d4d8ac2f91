"""Built-in recipe-runner plugins: one module per ``[optimizations]`` key, each owning one
pydantic settings model. torch and diffusers are imported only inside the functions that run."""
