"""Writes the Grafana dashboards in monitoring/grafana/dashboards/ (the JSON there is generated: edit this file).

    .venvs/gateway/bin/python monitoring/grafana/generate.py          # rewrite the JSON
    .venvs/gateway/bin/python monitoring/grafana/generate.py --check  # exit 1 if the JSON is stale

Every panel uses the provisioned data source (uid below); template variables are regex matchers
(`=~"$model"`, "All" = `.*`), so every query is also a valid PromQL text once they are substituted.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DS = {"type": "prometheus", "uid": "modelplat-prometheus"}
OUT = Path(__file__).resolve().parent / "dashboards"
RI = "$__rate_interval"


@dataclass
class Q:
    expr: str
    legend: str = ""


@dataclass
class P:
    title: str
    queries: list[Q]
    unit: str = "short"
    kind: str = "timeseries"  # timeseries, stat, table, bargauge
    description: str = ""
    width: int = 12
    height: int = 8
    extra: dict[str, Any] = field(default_factory=dict)


def row(title: str) -> P:
    return P(title, [], kind="row", width=24, height=1)


def var(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name, "label": label, "type": "query", "datasource": DS, "definition": query,
        "query": {"query": query, "refId": f"{name}-values"}, "refresh": 2, "sort": 1,
        "includeAll": True, "multi": True, "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    }


def quantiles(metric: str, sel: str, by: str = "", qs: tuple[float, ...] = (0.5, 0.95, 0.99)) -> list[Q]:
    """p50/p95/p99 (and the mean) of a histogram, per `by` labels if given."""
    grp = f"{by}, le" if by else "le"
    lg = "{{" + by + "}} " if by and "," not in by else ""
    out = [Q(f"histogram_quantile({q}, sum by ({grp}) (rate({metric}_bucket{{{sel}}}[{RI}])))",
             f"{lg}p{round(q * 100)}") for q in qs]
    mean = f"sum by ({by}) " if by else "sum "
    out.append(Q(f"{mean}(rate({metric}_sum{{{sel}}}[{RI}])) / {mean}(rate({metric}_count{{{sel}}}[{RI}]))",
                 f"{lg}mean"))
    return out


def panel(p: P, pid: int, x: int, y: int) -> dict[str, Any]:
    out: dict[str, Any] = {"id": pid, "type": p.kind, "title": p.title, "gridPos": {"h": p.height, "w": p.width,
                                                                                    "x": x, "y": y}}
    if p.kind == "row":
        return {**out, "collapsed": False, "panels": []}
    out.update({
        "datasource": DS, "description": p.description,
        "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
        "targets": [{"refId": chr(65 + i), "datasource": DS, "expr": q.expr, "legendFormat": q.legend or "__auto",
                     "range": p.kind != "table", "instant": p.kind == "table"}
                    for i, q in enumerate(p.queries)],
    })
    if p.kind == "timeseries":
        out["options"] = {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max"]},
                          "tooltip": {"mode": "multi", "sort": "desc"}}
    elif p.kind == "stat":
        out["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                          "colorMode": "value", "graphMode": "area", "textMode": "auto"}
    elif p.kind == "table":
        out["options"] = {"showHeader": True}
        out["transformations"] = [{"id": "merge", "options": {}},
                                  {"id": "organize", "options": {"excludeByName": {"Time": True}}}]
    out.update(p.extra)
    return out


def dashboard(uid: str, title: str, description: str, variables: list[dict[str, Any]],
              panels: list[P]) -> dict[str, Any]:
    laid: list[dict[str, Any]] = []
    x = y = line = 0
    for i, p in enumerate(panels, start=1):
        if x + p.width > 24 or p.kind == "row":
            x, y = 0, y + line
            line = 0
        laid.append(panel(p, i, x, y))
        x, line = x + p.width, max(line, p.height)
        if p.kind == "row":
            x, y, line = 0, y + p.height, 0
    return {
        "uid": uid, "title": title, "description": description, "tags": ["modelplat"], "editable": False,
        "schemaVersion": 39, "version": 1, "refresh": "30s", "timezone": "browser", "graphTooltip": 1,
        "time": {"from": "now-1h", "to": "now"}, "annotations": {"list": []}, "links": [],
        "templating": {"list": variables}, "panels": laid,
    }


# ---------------------------------------------------------------- platform overview
def overview() -> dict[str, Any]:
    g = 'protocol=~"$protocol", model=~"$model"'
    req = "modelplat_gateway_requests_total"
    panels = [
        P("Requests / s", [Q(f"sum(rate({req}{{{g}}}[{RI}]))")], "reqps", "stat", width=6, height=4,
          description="Every request the gateway answered for the selected protocols and models."),
        P("5xx ratio", [Q(f'(sum(rate({req}{{{g}, status=~"5.."}}[{RI}])) or vector(0))'
                          f' / sum(rate({req}{{{g}}}[{RI}]))')],
          "percentunit", "stat", width=6, height=4,
          description="Share of requests that ended in a server-side error (gateway or backend)."),
        P("In flight", [Q('sum(modelplat_gateway_requests_in_flight{protocol=~"$protocol"})')], "short", "stat",
          width=6, height=4, description="Requests being answered now, streams included."),
        P("Configs up", [Q('count(max by (config) (up{job=~"service|vllm"}) == 1) or vector(0)')], "short", "stat",
          width=6, height=4, description="Configs with at least one answering target (service or vLLM)."),
        row("Traffic"),
        P("Requests / s by protocol", [Q(f"sum by (protocol) (rate({req}{{{g}}}[{RI}]))", "{{protocol}}")], "reqps"),
        P("Requests / s by model", [Q(f"sum by (model) (rate({req}{{{g}}}[{RI}]))", "{{model}}")], "reqps"),
        P("Responses / s by status", [Q(f"sum by (status) (rate({req}{{{g}}}[{RI}]))", "{{status}}")], "reqps",
          description="4xx are client errors (bad input, unknown model); 5xx are failures to look into."),
        P("Upstream errors / s by kind", [Q(f'sum by (config, kind) (rate(modelplat_gateway_upstream_errors_total'
                                            f'{{protocol=~"$protocol"}}[{RI}]))', "{{config}} {{kind}}")], "reqps",
          description="connect: backend refused; timeout: silent too long; broken: dropped mid-answer; "
                      "status: backend answered 5xx."),
        row("Latency"),
        P("Request duration p95 by protocol", quantiles("modelplat_gateway_request_duration_seconds", g,
                                                        "protocol", (0.95,))[:1], "s"),
        P("Request duration p95 by model", quantiles("modelplat_gateway_request_duration_seconds", g, "model",
                                                     (0.95,))[:1], "s"),
        P("Time to first byte p50 / p95 by model", quantiles("modelplat_gateway_time_to_first_byte_seconds", g,
                                                             "model", (0.5, 0.95))[:2], "s",
          description="For streams, the first chunk: the time to first token as the client sees it."),
        P("Request duration (all selected)", quantiles("modelplat_gateway_request_duration_seconds", g), "s"),
        row("Streams and tokens"),
        P("Streamed chunks / s by model", [Q(f'sum by (model) (rate(modelplat_gateway_stream_chunks_total'
                                             f'{{{g}}}[{RI}]))', "{{model}}")], "short"),
        P("Tokens / s seen by the gateway", [Q(f'sum by (model, kind) (rate(modelplat_gateway_tokens_total'
                                               f'{{{g}}}[{RI}]))', "{{model}} {{kind}}")], "short",
          description="From usage objects: every non-streamed reply, and streams whose client asked for usage. "
                      "vLLM's own token counters (LLM dashboard) are the exact totals."),
        P("Rate-limit rejections / s", [Q(f'sum by (protocol, limit) (rate(modelplat_gateway_rate_limited_total'
                                          f'{{protocol=~"$protocol"}}[{RI}]))', "{{protocol}} {{limit}}")], "reqps"),
        P("In flight by protocol", [Q('sum by (protocol) (modelplat_gateway_requests_in_flight{protocol=~"$protocol"})',
                                      "{{protocol}}")], "short"),
        row("Configs"),
        P("Targets up", [Q('max by (config, engine, job) (up{job=~"service|vllm"})')], kind="table",
          description="1 = Prometheus scrapes it. A vllm target is 0 while its model is unloaded (lazy load)."),
        P("Lifecycle state", [Q("max by (config, state) (modelplat_service_state) == 1")], kind="table",
          description="unloaded, loading, ready or unloading, per config."),
        P("Backends the gateway routes to", [Q("modelplat_gateway_backends")], kind="table"),
        P("Model loads in range",
          [Q("sum by (config) (increase(modelplat_model_loads_total[$__range]))", "{{config}}")],
          kind="bargauge", description="Many loads in a short time: the idle timeout is too short for the traffic."),
        P("Queue depth by config", [Q("max by (config) (modelplat_queue_depth)", "{{config}}")], "short"),
        P("GPU memory used", [Q("max by (config, gpu) (modelplat_gpu_memory_used_bytes) / "
                                "max by (config, gpu) (modelplat_gpu_memory_total_bytes)", "{{config}} gpu {{gpu}}")],
          "percentunit", description="Needs a GPU with NVML (empty on CPU-only hosts)."),
    ]
    variables = [
        {"name": "protocol", "label": "Protocol", "type": "custom", "query": "openai,ollama,mtphotos",
         "includeAll": True, "multi": True, "allValue": ".*",
         "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
         "options": [{"selected": False, "text": p, "value": p} for p in ("openai", "ollama", "mtphotos")]},
        var("model", "Model", 'label_values(modelplat_gateway_requests_total{protocol=~"$protocol"}, model)'),
    ]
    return dashboard("modelplat-overview", "Modelplat / Platform overview",
                     "Traffic, errors and latency per protocol and model, and which configs are up.", variables, panels)


# ---------------------------------------------------------------- LLM (vLLM's own metrics)
def llm() -> dict[str, Any]:
    m = 'model_name=~"$model_name"'
    panels = [
        P("Requests running", [Q(f"sum(vllm:num_requests_running{{{m}}})")], kind="stat", width=6, height=4),
        P("Requests waiting", [Q(f"sum(vllm:num_requests_waiting{{{m}}})")], kind="stat", width=6, height=4),
        P("KV cache use", [Q(f"max(vllm:kv_cache_usage_perc{{{m}}})")], "percentunit", "stat", width=6, height=4),
        P("Generated tokens / s", [Q(f"sum(rate(vllm:generation_tokens_total{{{m}}}[{RI}]))")], kind="stat",
          width=6, height=4),
        row("Latency"),
        P("Time to first token", quantiles("vllm:time_to_first_token_seconds", m), "s",
          description="From arrival at vLLM to the first token (tokenisation and queueing included)."),
        P("Inter-token latency", quantiles("vllm:inter_token_latency_seconds", m), "s",
          description="Time between two output tokens of one request while it decodes."),
        P("End-to-end request latency", quantiles("vllm:e2e_request_latency_seconds", m), "s"),
        P("Queue, prefill and decode time (mean)", [
            Q(f"sum(rate(vllm:request_queue_time_seconds_sum{{{m}}}[{RI}])) / "
              f"sum(rate(vllm:request_queue_time_seconds_count{{{m}}}[{RI}]))", "queue"),
            Q(f"sum(rate(vllm:request_prefill_time_seconds_sum{{{m}}}[{RI}])) / "
              f"sum(rate(vllm:request_prefill_time_seconds_count{{{m}}}[{RI}]))", "prefill"),
            Q(f"sum(rate(vllm:request_decode_time_seconds_sum{{{m}}}[{RI}])) / "
              f"sum(rate(vllm:request_decode_time_seconds_count{{{m}}}[{RI}]))", "decode"),
        ], "s"),
        row("Throughput and scheduler"),
        P("Token throughput", [
            Q(f"sum by (model_name) (rate(vllm:prompt_tokens_total{{{m}}}[{RI}]))", "{{model_name}} prompt"),
            Q(f"sum by (model_name) (rate(vllm:generation_tokens_total{{{m}}}[{RI}]))", "{{model_name}} generated"),
        ], "short", description="Tokens per second."),
        P("Running and waiting requests", [
            Q(f"sum by (model_name) (vllm:num_requests_running{{{m}}})", "{{model_name}} running"),
            Q(f"sum by (model_name) (vllm:num_requests_waiting{{{m}}})", "{{model_name}} waiting"),
        ], "short", description="Waiting for long: the batch (max_num_seqs) or the KV cache is full."),
        P("KV cache use", [Q(f"max by (model_name) (vllm:kv_cache_usage_perc{{{m}}})", "{{model_name}}")],
          "percentunit"),
        P("Prefix cache hit rate", [Q(f"sum by (model_name) (rate(vllm:prefix_cache_hits_total{{{m}}}[{RI}])) / "
                                      f"sum by (model_name) (rate(vllm:prefix_cache_queries_total{{{m}}}[{RI}]))",
                                      "{{model_name}}")], "percentunit"),
        P("Finished requests by reason", [Q(f"sum by (finished_reason) (increase(vllm:request_success_total{{{m}}}"
                                            f"[{RI}]))", "{{finished_reason}}")], "short",
          description="stop: the model ended; length: max_tokens reached; abort: the client left."),
        P("Preemptions / s", [Q(f"sum by (model_name) (rate(vllm:num_preemptions_total{{{m}}}[{RI}]))",
                                "{{model_name}}")], "short",
          description="Requests evicted from the KV cache and recomputed: the cache is too small for the load."),
        P("Prompt and generation length (mean tokens)", [
            Q(f"sum(rate(vllm:request_prompt_tokens_sum{{{m}}}[{RI}])) / "
              f"sum(rate(vllm:request_prompt_tokens_count{{{m}}}[{RI}]))", "prompt"),
            Q(f"sum(rate(vllm:request_generation_tokens_sum{{{m}}}[{RI}])) / "
              f"sum(rate(vllm:request_generation_tokens_count{{{m}}}[{RI}]))", "generated"),
        ], "short"),
        P("Gateway time to first byte (p95, streams and replies)",
          [Q(f'histogram_quantile(0.95, sum by (protocol, le) (rate(modelplat_gateway_time_to_first_byte_seconds_bucket'
             f'{{model=~"$model_name", protocol=~"openai|ollama"}}[{RI}])))', "{{protocol}}")], "s",
          description="The same first token seen from the client side of the gateway."),
        row("Supervisor (lifecycle)"),
        P("Lifecycle state", [Q('max by (config, state) (modelplat_service_state{engine="vllm"}) == 1')], kind="table"),
        P("Model load time (mean since the supervisor started)", [
            Q('max by (config) (modelplat_model_load_seconds_sum{engine="vllm"} / '
              'modelplat_model_load_seconds_count{engine="vllm"})', "{{config}}")], "s", "bargauge",
          description="A cold start of vLLM, weights and warm-up included."),
    ]
    variables = [var("model_name", "Model", "label_values(vllm:num_requests_running, model_name)")]
    return dashboard("modelplat-llm", "Modelplat / LLM (vLLM)",
                     "vLLM's own metrics per served model: latency, throughput, scheduler, KV cache.",
                     variables, panels)


# ---------------------------------------------------------------- engines behind the shared service metrics
def service_panels(engine: str, tasks_hint: str) -> list[P]:
    s = f'engine="{engine}", config=~"$config"'
    return [
        P("Inferences / s by task", [Q(f"sum by (config, task) (rate(modelplat_inference_seconds_count{{{s}}}[{RI}]))",
                                       "{{config}} {{task}}")], "reqps"),
        P("Inference time p50 / p95 by task", [
            Q(f"histogram_quantile({q}, sum by (task, le) (rate(modelplat_inference_seconds_bucket{{{s}}}[{RI}])))",
              f"{{{{task}}}} p{round(q * 100)}") for q in (0.5, 0.95)], "s", description=tasks_hint),
        P("Inference errors / s", [Q(f"sum by (task, kind) (rate(modelplat_inference_errors_total{{{s}}}[{RI}]))",
                                     "{{task}} {{kind}}")], "reqps"),
        P("Queue depth and capacity", [Q(f"max by (config) (modelplat_queue_depth{{{s}}})", "{{config}} depth"),
                                       Q(f"max by (config) (modelplat_queue_capacity{{{s}}})", "{{config}} capacity")],
          "short", description="Requests beyond the capacity are rejected with 429."),
        P("Lifecycle state", [Q(f"max by (config, state) (modelplat_service_state{{{s}}}) == 1")], kind="table"),
        P("Loads and unloads in range", [
            Q(f"sum by (config) (increase(modelplat_model_loads_total{{{s}}}[$__range]))", "{{config}} loads"),
            Q(f"sum by (config) (increase(modelplat_model_unloads_total{{{s}}}[$__range]))", "{{config}} unloads"),
        ], kind="bargauge"),
        P("Model load time (mean since the service started)", [
            Q(f"max by (config) (modelplat_model_load_seconds_sum{{{s}}} / modelplat_model_load_seconds_count{{{s}}})",
              "{{config}}")], "s", "bargauge"),
        P("GPU memory", [Q(f"max by (config, gpu) (modelplat_gpu_memory_used_bytes{{{s}}})",
                           "{{config}} gpu {{gpu}} used"),
                         Q(f"max by (config, gpu) (modelplat_gpu_memory_total_bytes{{{s}}})",
                           "{{config}} gpu {{gpu}} total")], "bytes", description="Needs a GPU with NVML."),
    ]


def gateway_panels(sel: str) -> list[P]:
    req = "modelplat_gateway_requests_total"
    return [
        P("Gateway requests / s by route and status", [Q(f"sum by (route, status) (rate({req}{{{sel}}}[{RI}]))",
                                                         "{{route}} {{status}}")], "reqps"),
        P("Gateway request duration p95 by route", [
            Q(f"histogram_quantile(0.95, sum by (route, le) (rate(modelplat_gateway_request_duration_seconds_bucket"
              f"{{{sel}}}[{RI}])))", "{{route}}")], "s",
          description="As the client sees it: the service's inference time plus queueing and transfer."),
    ]


def image() -> dict[str, Any]:
    panels = [row("Image service"), *service_panels("diffusers", "A whole generation (all steps, VAE decode)."),
              row("Gateway: /v1/images"),
              *gateway_panels('protocol="openai", route=~"/v1/images.*", config=~"$config"')]
    variables = [var("config", "Config", 'label_values(modelplat_service_state{engine="diffusers"}, config)')]
    return dashboard("modelplat-image", "Modelplat / Image generation",
                     "Diffusers services: generations, time per image, queue, lifecycle, GPU memory.",
                     variables, panels)


def vision() -> dict[str, Any]:
    panels = [row("Vision service"),
              *service_panels("vision", "ocr, clip_img, clip_txt, face: milliseconds to a second on CPU."),
              row("Gateway: MT Photos API"), *gateway_panels('protocol="mtphotos", config=~"$config"')]
    variables = [var("config", "Config", 'label_values(modelplat_service_state{engine="vision"}, config)')]
    return dashboard("modelplat-vision", "Modelplat / MT Photos vision",
                     "OCR, CLIP and face recognition: requests, time per task, queue, lifecycle.", variables, panels)


DASHBOARDS = {"overview.json": overview, "llm.json": llm, "image.json": image, "vision.json": vision}


def render() -> dict[str, str]:
    return {name: json.dumps(build(), indent=2) + "\n" for name, build in DASHBOARDS.items()}


def main(argv: list[str]) -> int:
    stale = []
    for name, text in render().items():
        path = OUT / name
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"stale dashboards (run monitoring/grafana/generate.py): {', '.join(stale)}", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
