"""Study package: finetune."""
