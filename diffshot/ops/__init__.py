"""The numerical stages every method shares, batched over episodes: preprocess, graph, diffusion, classify."""
