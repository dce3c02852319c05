def extract_submodel(*a, **k): raise NotImplementedError
