"""Offline trainer (PyTorch): distillation, GRPO, PPO, ONNX export. Never imported by service/."""
