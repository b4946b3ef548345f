"""Plumbing every stage uses: one-line errors, atomic writes, paths, torchrun helpers, devices and
worker counts, text formatting, progress.
"""
