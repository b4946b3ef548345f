"""Datasets and what the training loop eats: sources (digits, CIFAR, ImageNet, image folders), reading
images, skipped images, seeded splits, weak/strong views, batch streams.
"""
