"""The student: prompt format, LoRA loading/saving (PEFT + GGUF twin), response log-probs, the training loop."""
