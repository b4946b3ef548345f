"""Debiased zero-shot pseudo-labels: computing them over cached logits, the confident set, and their
files (CSV, sidecar, reference format).
"""
