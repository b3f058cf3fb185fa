"""Data modules: DeepLense-format `.npy` folders, the packed cache, batch transforms."""
