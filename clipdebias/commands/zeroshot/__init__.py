"""``clipdebias zeroshot``: options (config), the run, the head student on cached embeddings, the image students."""
