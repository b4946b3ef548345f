"""CLIP: weights, the open_clip backbone and its transform, prompts and the text classifier, the
resumable FAISS embedding cache.
"""
