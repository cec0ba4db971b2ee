"""The models: retriever, readers, pipeline and knowledge editing (issues 3, 5, 8)."""
