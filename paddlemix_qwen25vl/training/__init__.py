"""Supervised fine-tuning: data (data.py, conversation.py), batches (collator.py), LoRA (lora.py), the Trainer (trainer.py), arguments and the demo model."""
