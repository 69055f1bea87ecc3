"""Tests of the LLM teacher: prompt serializer, teacher policy, fine-tuning kit, real-LLM integration."""
