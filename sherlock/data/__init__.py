"""Records, the LLaVA-CoT loader, disjoint sampling and the synthetic task."""
