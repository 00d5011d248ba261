"""Generation backends behind one interface: HF transformers, vLLM."""
