"""Pinned image sets and prefetch lists: the lists people edit, and the syncer
that fetches whole images ahead of time through the pull path."""
