"""Task prompts: the text of each task, its frozen sentence embedding, and RUPS (sec. 3.2)."""
