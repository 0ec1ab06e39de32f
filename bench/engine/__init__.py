"""The engine: what one stage computes (torch). A dense stage trains the shared dense model; a cell prunes and
trains a copy of it with one method at one sparsity; both evaluate and write their typed result to the store.
Models, data, losses, metrics, training loop, method context, masks and costs live here."""
