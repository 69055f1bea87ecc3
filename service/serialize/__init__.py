"""State serialization: tensors for the student (SPEC §5), prompts for the teacher."""
