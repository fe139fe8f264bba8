"""The DLC's handler service, for the embedded interpreter.

sagemaker-huggingface-inference-toolkit 2.6.0 (`handler_service.py`) and multi-model-server 1.1.11
(`mms/context.py`, `mms/service.py`, `otf_message_handler.create_predict_response`) as far as a
user script can tell: the same hooks, called with the same arguments (the optional `context`
detected by signature), the same defaults around them, the same handling of what they return and
of what they raise. The defaults are native: `sagemaker_hf_server.decode` / `encode` (the server's
codecs) and, without `model_fn`, the server's own pipeline as the model.
"""

import importlib.util
import inspect
import json
import os
import sys

import sagemaker_hf_server as _native

JSON = "application/json"
CSV = "text/csv"
ANY = "*/*"
UTF8_TYPES = [JSON, CSV]


class PredictionException(Exception):
    """mms.service.PredictionException: a message and the status code to answer with."""

    def __init__(self, message, error_code=500):
        self.message = message
        self.error_code = error_code
        super().__init__(message)

    def __str__(self):
        return "{message} : {error_code}".format(message=self.message, error_code=self.error_code)


class RequestProcessor:
    """mms.context.RequestProcessor: one request's headers, and its response's status and headers."""

    def __init__(self, request_header):
        self._status_code = 200
        self._reason_phrase = None
        self._response_header = {}
        self._request_header = request_header

    def get_request_property(self, key):
        return self._request_header.get(key)

    def report_status(self, code, reason_phrase=None):
        self._status_code = code
        self._reason_phrase = reason_phrase

    def get_response_status_code(self):
        return self._status_code

    def get_response_status_phrase(self):
        return self._reason_phrase

    def add_response_property(self, key, value):
        self._response_header[key] = value

    def get_response_headers(self):
        return self._response_header

    def get_response_header(self, key):
        return self._response_header.get(key)

    def get_request_properties(self):
        return self._request_header


class Context:
    """mms.context.Context. MMS hands one object to every call and swaps its request; requests run
    here concurrently, so each gets its own Context sharing the model's system properties."""

    def __init__(self, model_name, model_dir, system_properties=None):
        self.model_name = model_name
        self.manifest = {"model": {"modelName": model_name}}
        self._system_properties = system_properties or {
            "model_dir": model_dir,
            "gpu_id": None,
            "batch_size": 1,
            "server_name": "MMS",
            "server_version": "1.1.11",
        }
        self.request_ids = None
        self._request_processor = None
        self.metrics = None

    def for_request(self, request_id, headers):
        context = Context(self.model_name, None, self._system_properties)
        context.request_ids = {0: request_id}
        context.request_processor = [RequestProcessor(headers)]
        context.metrics = _Metrics()
        return context

    @property
    def system_properties(self):
        return self._system_properties

    @property
    def request_processor(self):
        return self._request_processor

    @request_processor.setter
    def request_processor(self, request_processor):
        self._request_processor = request_processor

    def get_request_id(self, idx=0):
        return self.request_ids.get(idx)

    def get_request_header(self, idx, key):
        return self._request_processor[idx].get_request_property(key)

    def get_all_request_header(self, idx):
        return self._request_processor[idx].get_request_properties()

    def set_response_content_type(self, idx, value):
        self.set_response_header(idx, "content-type", value)

    def get_response_content_type(self, idx):
        return self.get_response_headers(idx).get("content-type")

    def get_response_status(self, idx):
        return (
            self._request_processor[idx].get_response_status_code(),
            self._request_processor[idx].get_response_status_phrase(),
        )

    def set_response_status(self, code=200, phrase="", idx=0):
        if self._request_processor is not None and self._request_processor[idx] is not None:
            self._request_processor[idx].report_status(code, reason_phrase=phrase)

    def set_all_response_status(self, code=200, phrase=""):
        for processor in self._request_processor:
            processor.report_status(code, reason_phrase=phrase)

    def get_response_headers(self, idx):
        return self._request_processor[idx].get_response_headers()

    def set_response_header(self, idx, key, value):
        self._request_processor[idx].add_response_property(key, value)


class _Metrics:
    """The part of MMS's MetricsStore that handlers call; the server keeps its own metrics."""

    def add_time(self, *args, **kwargs):
        pass

    def add_counter(self, *args, **kwargs):
        pass

    def add_size(self, *args, **kwargs):
        pass

    def add_percent(self, *args, **kwargs):
        pass

    def add_error(self, *args, **kwargs):
        pass

    def add_metric(self, *args, **kwargs):
        pass


class _Headers(dict):
    """Request headers as MMS hands them over; hyper gives the names in lower case, so a lookup
    under another spelling ("Accept", "X-Amzn-SageMaker-Custom-Attributes") finds them too."""

    def get(self, key, default=None):
        value = super().get(key)
        if value is None and isinstance(key, str):
            value = super().get(key.lower())
        return default if value is None else value

    def __getitem__(self, key):
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key):
        return self.get(key) is not None


def _extra_args(default_count, func, context):
    """handler_service.function_extra_arg: the hook takes `context` iff it has every parameter of
    the default (whose count `default_count` includes `context`)."""
    count = len(inspect.signature(func).parameters)
    if count == default_count:
        return [context]
    if count == default_count - 1:
        return []
    raise TypeError(
        "{} definition takes {} or {} arguments but {} were given.".format(
            func.__name__, default_count - 1, default_count, count
        )
    )


def _default_predict(data, model, context=None):
    inputs = data.pop("inputs", data)
    parameters = data.pop("parameters", None)
    if parameters is not None:
        return model(inputs, **parameters)
    return model(inputs)


class _Unserializable(Exception):
    pass


def _body(value):
    """What MMS sends for a handler's return value: bytes as they are, str as UTF-8, anything
    else as `json.dumps(value, indent=2)`."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    try:
        return json.dumps(value, indent=2).encode("utf-8")
    except TypeError as error:
        raise _Unserializable() from error


def _load_module(module_name, script):
    """Imports the user script under `module_name` (its own name per model)."""
    if os.path.basename(script) == "__init__.py":
        package = os.path.dirname(script)
        spec = importlib.util.spec_from_file_location(
            module_name, script, submodule_search_locations=[package]
        )
    else:
        spec = importlib.util.spec_from_file_location(module_name, script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


class Handler:
    """One model's handlers: `HuggingFaceHandlerService.initialize` at construction, `handle`
    per request."""

    def __init__(self, module_name, script, model_dir, native_model, task):
        self.model_dir = model_dir
        self.task = task
        self.context = Context("model", model_dir)
        for folder in (os.path.join(model_dir, "code"), os.path.dirname(script)):
            if folder not in sys.path:
                sys.path.insert(0, folder)
        self.module = _load_module(module_name, script)
        hooks = {
            name: getattr(self.module, name, None)
            for name in ("model_fn", "input_fn", "predict_fn", "output_fn", "transform_fn")
        }
        self.hooks = sorted(name for name, hook in hooks.items() if hook is not None)
        if hooks["transform_fn"] and (hooks["input_fn"] or hooks["predict_fn"] or hooks["output_fn"]):
            raise ValueError(
                "Cannot use transform_fn implementation in conjunction with input_fn, predict_fn, and/or output_fn implementation"
            )
        context = self.context
        self.preprocess, self.preprocess_extra = self._default_preprocess, []
        self.predict, self.predict_extra = _default_predict, []
        self.postprocess, self.postprocess_extra = self._default_postprocess, []
        self.transform, self.transform_extra = self._default_transform, []
        if hooks["input_fn"]:
            self.preprocess = hooks["input_fn"]
            self.preprocess_extra = _extra_args(3, self.preprocess, context)
        if hooks["predict_fn"]:
            self.predict = hooks["predict_fn"]
            self.predict_extra = _extra_args(3, self.predict, context)
        if hooks["output_fn"]:
            self.postprocess = hooks["output_fn"]
            self.postprocess_extra = _extra_args(3, self.postprocess, context)
        if hooks["transform_fn"]:
            self.transform = hooks["transform_fn"]
            self.transform_extra = _extra_args(5, self.transform, context)
        if hooks["model_fn"]:
            load_extra = _extra_args(2, hooks["model_fn"], context)
            _native._building(model_dir)
            try:
                self.model = hooks["model_fn"](*([model_dir] + load_extra))
            finally:
                _native._building(None)
        else:
            self.model = native_model

    def _default_preprocess(self, input_data, content_type, context=None):
        if self.task in ("zero-shot-classification", "table-question-answering") and content_type == CSV:
            raise PredictionException(
                f"content type {content_type} not support with {self.task}, use different content_type",
                400,
            )
        return _native.decode(input_data, content_type)

    def _default_postprocess(self, prediction, accept, context=None):
        return _native.encode(prediction, accept)

    def _default_transform(self, model, input_data, content_type, accept, context=None):
        data = self.preprocess(*([input_data, content_type] + self._extra(self.preprocess_extra, context)))
        prediction = self.predict(*([data, model] + self._extra(self.predict_extra, context)))
        return self.postprocess(*([prediction, accept] + self._extra(self.postprocess_extra, context)))

    @staticmethod
    def _extra(extra, context):
        # The request's own context where the hook takes one.
        return [context] if extra else []

    def handle(self, request_id, body, headers):
        """One request: `(status, [(header, value)], body bytes)`; an error is
        `(status, None, message)`."""
        headers = _Headers(headers)
        context = self.context.for_request(request_id, headers)
        try:
            content_type = None
            for key in headers:
                if key in ("content-type", "contenttype"):
                    content_type = dict.__getitem__(headers, key)
                    break
            accept = headers.get("Accept") or headers.get("accept")
            if not accept or accept == ANY:
                accept = JSON
            input_data = body
            if content_type in UTF8_TYPES:
                input_data = input_data.decode("utf-8")
            # (the default transform passes the request's context on to the hooks that take one)
            takes_context = self.transform_extra or self.transform == self._default_transform
            response = self.transform(
                *([self.model, input_data, content_type, accept] + self._extra(takes_context, context))
            )
            context.set_response_content_type(0, accept)
        except Exception as error:  # handle() turns every failure into a 400 with its message
            return 400, None, str(error)
        try:
            payload = _body(response)
        except _Unserializable:
            return 503, None, "Unsupported model output data type."
        status, _phrase = context.get_response_status(0)
        response_headers = [(str(k), str(v)) for k, v in context.get_response_headers(0).items()]
        return (200 if status is None else int(status)), response_headers, payload
