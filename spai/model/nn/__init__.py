"""The SPAI ``nn.Module`` s: spectral filter, frozen CLIP backbone, FrequencyRestorationEstimator, aggregator, the
model that joins them (:class:`.spai_model.SPAIModel`) and the precision rules of its reduced-precision routes.
They import torch and the model's config only: scoring, routing and printing are :mod:`spai.infer`'s."""
