"""Fine-tuning of the LLM teacher with Hugging Face TRL (``gnbsched finetune``; the ``[finetune]`` extra).

``tiny`` builds a tiny local tokenizer and Qwen2 model (tests, smoke runs); ``sft`` runs the
supervised cold start (``SFTTrainer``) and ``grpo`` the GRPO stage (``GRPOTrainer``) with the
reward functions of ``service.finetune.rewards``; ``evaluate`` scores held-out answers (valid
rate, utility / KM, mean reward) and ``summary`` reports them before and after training.
Models are local directories; nothing is downloaded.
"""
