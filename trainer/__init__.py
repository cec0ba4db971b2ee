"""Joint retriever-reader training, few-shot finetuning and evaluation (issues 6, 7)."""
