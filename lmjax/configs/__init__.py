"""Built-in configurations; research configs live in experiments/configs/."""
