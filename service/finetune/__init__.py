"""Fine-tuning kit for the LLM teacher (SPEC §6): GRPO rewards, SFT / GRPO datasets, recipe.

``rewards`` — the composite reward of LSA eq. 12–14 as plain functions of (slot, completion text)
and as TRL ``reward_funcs``; ``dataset`` — prompt/completion JSONL from the simulators
(``gnbsched dataset``); ``RECIPE.md`` — how to run SFT cold start then GRPO with TRL on a GPU.
Nothing here imports torch or TRL.
"""
