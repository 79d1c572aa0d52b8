"""Jinja rendering of ``templates/k8s`` into Kubernetes manifests, and of the cluster scrape config.

One typed :class:`RenderConfig` says everything the templates need that is not in the plan or the
profile: namespace, names, images and tags, ports, labels, where the models live (NFS or a PVC),
TF Serving's batching parameters. :func:`render_plan` turns a :class:`~infadapter.core.plan.Plan` into the
manifests of its variants (ConfigMap, Deployment, Service each); :func:`render_platform` renders the
dispatcher, the adapter with its least-privilege RBAC, and the Prometheus-operator monitors. Both
the ``render`` command and the Kubernetes/dry-run backends go through here, so what a reviewer sees
in ``tests/golden`` is what the backend applies.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from infadapter import paths
from infadapter.core.plan import Plan
from infadapter.core.profile import Profile, pod_layout, threads_for_cores
from infadapter.errors import BadInput
from infadapter.loading import load_yaml

TEMPLATES = paths.TEMPLATES

#: Label keys (app.kubernetes.io recommended labels plus ours).
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_VARIANT = "infadapter.io/variant"
#: The inference service a variant serves (profiles with ``services:``; absent for one service).
LABEL_SERVICE = "infadapter.io/service"
LABEL_GENERATION = "infadapter.io/generation"
ANNOTATION_PLAN = "infadapter.io/plan"
ANNOTATION_CORES = "infadapter.io/cores"
ANNOTATION_SHARE = "infadapter.io/share"
ANNOTATION_LOAD_TIME = "infadapter.io/load-time-s"
MANAGER = "infadapter"
COMPONENT_MODEL_SERVER = "model-server"
COMPONENT_AUTOSCALER = "autoscaler"  # an upstream baseline's HPA or VPA, and the VPA's checkpoint

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class ModelStore(_Strict):
    """Where TF Serving finds ``<name>/<version>/saved_model.pb``: an NFS export or a PVC."""

    nfs_server: str | None = Field(default=None, description="NFS server host or IP")
    nfs_path: str = Field(default="/srv/infadapter/models", description="exported folder holding the models")
    pvc: str | None = Field(default="infadapter-models", description="PersistentVolumeClaim name (or set nfs_server)")
    mount_path: str = Field(default="/models", description="where the model store is mounted in the pod")

    @model_validator(mode="after")
    def _one_source(self) -> ModelStore:
        if self.nfs_server and self.pvc and "pvc" in self.model_fields_set:
            raise ValueError("set either nfs_server (with nfs_path) or pvc, not both")
        if not self.nfs_server and not self.pvc:
            raise ValueError("set nfs_server (with nfs_path) or pvc")
        if not self.nfs_path.startswith("/") or not self.mount_path.startswith("/"):
            raise ValueError("nfs_path and mount_path must be absolute paths")
        return self


class Batching(_Strict):
    """TF Serving's ``--batching_parameters_file`` (the paper served batch 1)."""

    enabled: bool = Field(default=True, description="pass --enable_batching")
    max_batch_size: int = Field(default=1, ge=1, description="largest batch TF Serving forms")
    batch_timeout_micros: int = Field(default=0, ge=0, description="how long to wait to fill a batch")
    max_enqueued_batches: int = Field(default=100, ge=1, description="queue bound before rejecting")
    num_batch_threads: int | None = Field(
        default=None, ge=1, description="batch threads; default: the variant's cores, rounded up"
    )
    allowed_batch_sizes: tuple[int, ...] = Field(default=(), description="optional allowed sizes")


class Toleration(_Strict):
    """A pod toleration (the Kubernetes field names), so variant pods may run on tainted nodes."""

    key: str = ""
    operator: str = Field(default="Equal", pattern=r"^(Equal|Exists)$")
    value: str = ""
    effect: str = Field(default="", pattern=r"^(|NoSchedule|PreferNoSchedule|NoExecute)$")


class TfServing(_Strict):
    """The model-server container of every variant."""

    image: str = Field(default="tensorflow/serving", description="TF Serving image (no tag)")
    tag: str = Field(default="2.8.0", description="image tag; the paper used 2.8.0")
    pull_policy: str = Field(default="IfNotPresent", description="imagePullPolicy")
    grpc_port: int = Field(default=8500, ge=1, le=65535)
    rest_port: int = Field(default=8501, ge=1, le=65535)
    replicas: int = Field(
        default=1, ge=1, description="fewest pods per variant; a variant's planned cores are split evenly over them"
    )
    max_pod_cores: float | None = Field(
        default=None,
        gt=0,
        description="most cores of one pod; more run as replicas. Wins over the profile's max_pod_cores; "
        "default: the profile's, else (adapt --backend kubernetes) the largest allocatable CPU of the nodes",
    )
    pod_annotations: dict[str, str] = Field(
        default_factory=dict, description="extra annotations on the variant pods (e.g. for a scraper or kwok)"
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="nodeSelector of the variant pods (e.g. a dedicated inference node pool)"
    )
    tolerations: tuple[Toleration, ...] = Field(default=(), description="tolerations of the variant pods")
    name_prefix: str = Field(default="tfs-", description="object name = prefix + variant name")
    rest_threads_per_core: int = Field(default=15, ge=1, description="--rest_api_num_threads per core (paper 15)")
    readiness_period_s: int = Field(default=2, ge=1)
    readiness_failure_threshold: int = Field(default=3, ge=1)
    startup_timeout_s: int = Field(default=300, ge=10, description="how long a pod may take to load and warm up")
    termination_grace_s: int = Field(default=30, ge=0)
    config_mount_path: str = Field(default="/etc/infadapter", description="where the ConfigMap is mounted")

    @field_validator("name_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if v and not (v[0].isalpha() and v.islower() and all(c.isalnum() or c == "-" for c in v)):
            raise ValueError(f"must be lowercase letters, digits and '-', starting with a letter, got {v!r}")
        return v


class Dispatcher(_Strict):
    """The router in front of the variants (``cli.py dispatch``)."""

    name: str = Field(default="infadapter-dispatcher", pattern=_DNS_LABEL)
    port: int = Field(default=8500, ge=1, le=65535)
    service_type: str = Field(default="ClusterIP", description="ClusterIP, NodePort or LoadBalancer")
    admin_token_secret: str = Field(
        default="infadapter-admin-token", description="Secret with key 'token' (created by hand, never rendered)"
    )
    cpu: str = Field(default="250m", description="CPU request (what the scheduler reserves)")
    cpu_limit: str = Field(default="1", description="CPU limit (empty: none)")
    memory: str = Field(default="512Mi")


class Adapter(_Strict):
    """The adapter itself, running ``cli.py adapt --backend kubernetes`` in the namespace."""

    name: str = Field(default="infadapter-adapter", pattern=_DNS_LABEL)
    profile_path: str = Field(default="profiles/paper.yaml",
                              description="profile inside the image (relative: to the image's app folder)")
    prometheus_url: str = Field(default="", description="Prometheus base URL; empty: dispatcher counters")
    dispatcher_url: str = Field(
        default="", pattern=r"^(https?://[^\s/]+)?$",
        description="the dispatcher as the adapter reaches it; empty: its Service's DNS name (a cluster without "
                    "DNS, such as scripts/local-cluster.sh, gives the Service's ClusterIP, http://IP:PORT)")
    extra_args: tuple[str, ...] = Field(default=(), description="more `cli.py adapt` arguments")
    cpu: str = Field(default="500m")
    memory: str = Field(default="512Mi")


class Monitoring(_Strict):
    """Prometheus-operator monitors (PodMonitor for TF Serving, ServiceMonitor for the dispatcher)."""

    operator: bool = Field(default=True, description="render PodMonitor and ServiceMonitor")
    scrape_interval: str = Field(default="5s", pattern=r"^[0-9]+(ms|s|m)$", description="the paper: 5 s windows")
    selector_labels: dict[str, str] = Field(
        default_factory=dict, description="labels your Prometheus selects monitors by, e.g. release: prometheus"
    )


class ParentRef(_Strict):
    """A Gateway the HTTPRoute attaches to (Gateway API ``parentRefs``)."""

    name: str = Field(pattern=_DNS_LABEL, description="the Gateway's name")
    namespace: str | None = Field(default=None, pattern=_DNS_LABEL, description="its namespace [the route's]")
    section_name: str | None = Field(default=None, description="one listener of it [all]")


class Gateway(_Strict):
    """``router: gateway``: the plan's shares become the backendRefs weights of one Gateway API HTTPRoute
    (served by Envoy Gateway, Istio, NGINX Gateway Fabric and others) instead of the dispatcher's."""

    route_name: str = Field(default="infadapter", pattern=_DNS_LABEL, description="the HTTPRoute's name")
    parent_refs: tuple[ParentRef, ...] = Field(
        default=(ParentRef(name="infadapter-gateway"),), min_length=1, description="the Gateways it attaches to"
    )
    hostnames: tuple[str, ...] = Field(default=(), description="hostnames it matches [any]")
    path_prefix: str = Field(default="/v1/models", description="requests routed by the weights")
    model_name: str = Field(
        default="resnet",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="the one model name every variant serves under, so clients call "
        "/v1/models/<model_name>:predict whichever variant the gateway picks",
    )
    weight_scale: int = Field(default=1000, ge=1, le=1_000_000, description="weight of a share of 1")


class RenderConfig(_Strict):
    """Everything the templates need besides the plan and the profile."""

    namespace: str = Field(default="infadapter", pattern=_DNS_LABEL, description="namespace of all objects")
    instance: str = Field(default="infadapter", pattern=_DNS_LABEL, description="app.kubernetes.io/instance")
    image: str = Field(default="infadapter", description="image of the dispatcher and the adapter (no tag)")
    tag: str = Field(default="0.1.0", description="tag of that image")
    labels: dict[str, str] = Field(default_factory=dict, description="extra labels on every object")
    model_store: ModelStore = Field(default_factory=ModelStore, description="NFS export or PVC with the models")
    tfserving: TfServing = Field(default_factory=TfServing)
    batching: Batching = Field(default_factory=Batching)
    dispatcher: Dispatcher = Field(default_factory=Dispatcher)
    adapter: Adapter = Field(default_factory=Adapter)
    monitoring: Monitoring = Field(default_factory=Monitoring)
    model_server: str = Field(
        default="onnx",
        pattern=r"^(onnx|tfserving)$",
        description="onnx: our TF-Serving-compatible ONNX server (cli.py serve-model in the `image`), loading the "
        "model.onnx files the models role stages; tfserving: TensorFlow Serving (`tfserving.image`) with SavedModels",
    )
    router: str = Field(
        default="dispatcher",
        pattern=r"^(dispatcher|gateway)$",
        description="dispatcher (our router, weights through its admin API) or gateway (a Gateway API HTTPRoute)",
    )
    gateway: Gateway = Field(default_factory=Gateway)

    def served_model(self, model: str, service: str = "") -> str:
        """The model name a variant's TF Serving serves: behind a gateway one shared name, the service's own in a
        profile with services (clients call /v1/models/<service>:predict whichever variant the route picks)."""
        if self.router != "gateway":
            return model
        return service or self.gateway.model_name

    def route_name(self, service: str = "") -> str:
        """The HTTPRoute's name: ``gateway.route_name``, with ``-<service>`` for each service of a profile with
        services (one route per service)."""
        return f"{self.gateway.route_name}-{service}" if service else self.gateway.route_name

    def route_weights(self, shares: Mapping[str, float]) -> dict[str, int]:
        """HTTPRoute backendRef weights of each variant's Service for the plan's shares."""
        return {self.object_name(n): max(0, round(s * self.gateway.weight_scale)) for n, s in shares.items()}

    def object_name(self, variant: str) -> str:
        """Deployment/Service name of a variant."""
        return f"{self.tfserving.name_prefix}{variant}"

    def variant_url(self, variant: str) -> str:
        """The REST base URL of a variant's Service, as the in-cluster dispatcher reaches it."""
        return f"http://{self.object_name(variant)}.{self.namespace}.svc:{self.tfserving.rest_port}"

    def common_labels(self) -> dict[str, str]:
        return {**self.labels, LABEL_INSTANCE: self.instance, LABEL_MANAGED_BY: MANAGER}

    def model_server_selector(self) -> dict[str, str]:
        """Labels that find every model-server object of this instance."""
        return {LABEL_INSTANCE: self.instance, LABEL_MANAGED_BY: MANAGER, LABEL_COMPONENT: COMPONENT_MODEL_SERVER}


def load_render_config(path: str | Path | None) -> RenderConfig:
    """Read a YAML render config (or the defaults for None); BadInput naming the field otherwise."""
    if path is None:
        return RenderConfig()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(f"--config: file {p} not found; pass a render config YAML (see docs/kubernetes.md)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"--config: cannot read {p} ({exc.__class__.__name__}); pass a UTF-8 YAML file") from None
    # Safe YAML without aliases, duplicate keys or deep nesting (infadapter.loading).
    data = load_yaml(text, origin=f"--config: {p}") or {}
    return config_from_dict(data, origin=str(p))


def config_from_dict(data: Any, origin: str = "config") -> RenderConfig:
    """Validate a mapping as a :class:`RenderConfig`."""
    if not isinstance(data, Mapping):
        raise BadInput(f"{origin}: must be a YAML mapping of render settings")
    try:
        return RenderConfig.model_validate(dict(data))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "config"
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise BadInput(f"{origin}: {loc}: {msg}") from None


# -- quantities and thread counts ------------------------------------------------------------------
def cpu_quantity(cores: float) -> str:
    """Cores as a Kubernetes CPU quantity: whole cores as "2", fractions in millicores ("500m")."""
    if cores <= 0 or math.isnan(cores):
        raise BadInput(f"cores: must be > 0 to run a variant, got {cores:g}")
    milli = round(cores * 1000)
    if milli % 1000 == 0:
        return str(milli // 1000)
    return f"{milli}m"


def parse_cpu(quantity: str | int | float | None) -> float:
    """A Kubernetes CPU quantity ("2", "500m", 1.5) as cores; 0 for None."""
    if quantity is None:
        return 0.0
    from kubernetes.utils import parse_quantity  # the client's parser, so we agree with the server

    return float(parse_quantity(str(quantity)))


@dataclass(frozen=True)
class Threads:
    """TF Serving's thread flags for a core count (the paper: intra 1, inter = cores, REST 15*cores)."""

    intra_op: int
    inter_op: int
    rest_api: int
    batch: int


def threads_for(cores: float, config: RenderConfig) -> Threads:
    """Thread counts derived from the CPU limit, so TF Serving never runs more busy threads than cores."""
    whole = max(1, math.ceil(cores - 1e-9))
    return Threads(
        intra_op=1,
        inter_op=whole,
        rest_api=max(1, math.ceil(config.tfserving.rest_threads_per_core * cores - 1e-9)),
        batch=config.batching.num_batch_threads or whole,
    )


# -- manifests -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Manifest:
    """One rendered object: its text (what is written and applied) and the parsed dict."""

    filename: str
    text: str
    obj: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.obj["kind"])

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])


@dataclass(frozen=True)
class VariantSpec:
    """What one variant's objects are rendered from.

    ``template_cores`` is what the pod template holds; after an in-place resize it stays at the cores
    the pods were created with (changing it would roll the pods), while ``cores`` is the plan's.
    """

    name: str
    model: str
    cores: float
    template_cores: float
    share: float
    memory: str
    replicas: int = 1  # pods; ``cores`` = replicas x cores per pod (template_cores unless resized in place)
    load_time_s: float = 0.0  # the profile's load time (a pod annotation; kwok's ready delay can follow it)
    #: CPU limit = request (the policy entry's ``cpu_limited``); False: a CPU request and no CPU limit (HPA,
    #: vpa-requests: a pod may use the node's free CPU beyond its request, as the simulator models them).
    cpu_limited: bool = True
    #: The inference service this variant serves ("" in a profile without ``services:``).
    service: str = ""


@dataclass(frozen=True)
class UpstreamAutoscaler:
    """The cluster's own autoscaler on one variant (policies ``hpa-upstream`` and ``vpa-upstream``): the backend
    creates the variant once and this object beside it, then only reads back what the autoscaler does."""

    kind: str  # "hpa" or "vpa"
    variant: str
    #: HPA: the pod size and the replica range; its target CPU utilization (as the simulated ``hpa``).
    pod_cores: float = 1.0
    min_replicas: int = 1
    max_replicas: int = 1
    target_utilization: float = 0.7
    #: VPA: the range of the container's CPU.
    min_cores: float = 0.25
    max_cores: float = 1.0

    @property
    def api_kind(self) -> str:
        return "HorizontalPodAutoscaler" if self.kind == "hpa" else "VerticalPodAutoscaler"


@dataclass(frozen=True)
class PodRules:
    """How the running policy's cores become pods: its registry entry's flags
    (:class:`infadapter.core.policies.PolicyEntry`), as the local backend and the simulator honour them.

    ``in_place`` False: a change of cores is never an in-place resize; with ``pod_cores`` (HPA's pod size) it is a
    change of replicas of pods of exactly that size. ``cpu_limited`` False: pods carry a CPU request and no limit.
    """

    in_place: bool = True
    cpu_limited: bool = True
    pod_cores: float | None = None
    #: An upstream policy's autoscaler, created beside its variant (the backend then only reads back).
    autoscaler: UpstreamAutoscaler | None = None


def render_autoscaler(a: UpstreamAutoscaler, config: RenderConfig, service: str = "") -> Manifest:
    """The HorizontalPodAutoscaler or VerticalPodAutoscaler of an upstream baseline, named as its variant."""
    name = config.object_name(a.variant)
    labels = {**config.common_labels(), LABEL_COMPONENT: COMPONENT_AUTOSCALER, LABEL_VARIANT: a.variant,
              **({LABEL_SERVICE: service} if service else {})}
    return _render(environment(), f"k8s/{a.kind}.yaml.j2", f"{name}.{a.kind}.yaml", c=config, a=a, obj_name=name,
                   labels=labels)


@functools.cache
def environment() -> jinja2.Environment:
    """The one Jinja environment of every template under ``templates/`` (manifests, the Prometheus configs and
    rules, HAProxy's config): names are relative to that folder (``"prometheus/local.yml.j2"``); undefined
    variables are errors; block tags leave no blank lines (as Ansible's ``template`` renders the same files).
    Cached: compiling templates costs more than rendering them."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # YAML and text protos, not HTML
    )
    # JSON strings are valid YAML scalars: every value a user controls goes through `q`.
    env.filters["q"] = lambda v: json.dumps(v, ensure_ascii=False)
    env.filters["cpu"] = cpu_quantity
    env.filters["merge"] = lambda a, b: {**a, **b}
    return env


def _render(env: jinja2.Environment, template: str, filename: str, **ctx: Any) -> Manifest:
    text = env.get_template(template).render(**ctx)
    try:
        obj = yaml.safe_load(text)
    except yaml.YAMLError as exc:  # a template bug, not user input
        raise RuntimeError(f"template {template} rendered invalid YAML: {exc}") from exc
    return Manifest(filename=filename, text=text, obj=obj)


def plan_annotation(plan: Plan, generation: int) -> str:
    """The plan JSON stored on every model-server Deployment (read back after a restart)."""
    return json.dumps({"generation": generation, "plan": plan.as_dict()}, sort_keys=True, separators=(",", ":"))


def largest_pod_cores(profile: Profile, config: RenderConfig | None = None,
                      max_pod_cores: float | None = None) -> float | None:
    """The largest pod's cores, the one rule: the render config's ``tfserving.max_pod_cores`` (the cluster's
    deployment setting), else the profile's ``max_pod_cores``, capped by ``max_pod_cores`` (a size the cluster
    refused); None (or 0) when nothing limits a pod (the kubernetes backend then asks the nodes). The solver
    (through the profile the backend's setup sizes with it) and the renderer both read it."""
    limit = (config or RenderConfig()).tfserving.max_pod_cores or profile.max_pod_cores
    if max_pod_cores is not None:
        limit = min(limit, max_pod_cores) if limit else max_pod_cores
    return limit


def variant_layout(
    cores: float, profile: Profile, config: RenderConfig | None = None, max_pod_cores: float | None = None,
    pod_cores: float | None = None,
) -> tuple[int, float]:
    """(replicas, cores per pod) of a variant planned with ``cores``.

    The most cores of one pod: ``max_pod_cores`` (what the backend learned from the cluster), else the
    render config's ``tfserving.max_pod_cores``, else the profile's; at least ``tfserving.replicas`` pods.
    A policy that scales by replicas of a fixed pod size (HPA's ``pod_cores``, its entry's ``in_place``
    False) gets pods of exactly ``pod_cores``, as many as its cores need (rounded up): its replicas.
    """
    config = config or RenderConfig()
    if pod_cores:
        return (max(1, math.ceil(cores / pod_cores - 1e-9)), pod_cores) if cores > 0 else (0, 0.0)
    replicas, per_pod = pod_layout(cores, largest_pod_cores(profile, config, max_pod_cores))
    if 0 < replicas < config.tfserving.replicas:
        replicas, per_pod = pod_layout(cores, cores / config.tfserving.replicas)
    return replicas, per_pod


def variant_specs(
    plan: Plan,
    profile: Profile,
    template_cores: Mapping[str, float] | None = None,
    config: RenderConfig | None = None,
    max_pod_cores: float | None = None,
    pods: PodRules | None = None,
) -> list[VariantSpec]:
    """The variants of ``plan`` joined with the profile (memory, model name) and laid out in pods (``pods``: the
    policy's rules, :class:`PodRules`)."""
    pods = pods or PodRules()
    out = []
    for a in plan.allocations:
        v = profile.variant(a.name)
        replicas, per_pod = variant_layout(a.cores, profile, config, max_pod_cores, pods.pod_cores)
        tmpl = (template_cores or {}).get(a.name, per_pod)
        out.append(
            VariantSpec(a.name, v.model or v.name, a.cores, tmpl, a.share, v.memory, max(replicas, 1), v.load_time_s,
                        pods.cpu_limited, profile.service_of(a.name))
        )
    return out


def render_variant(
    spec: VariantSpec, plan: Plan, generation: int, config: RenderConfig, env: jinja2.Environment | None = None
) -> list[Manifest]:
    """ConfigMap, Deployment and Service of one variant, in the order they must be applied."""
    env = env or environment()
    name = config.object_name(spec.name)
    ctx = {
        "c": config,
        "v": spec,
        "served": config.served_model(spec.model, spec.service),
        "served_dir": config.model_store.mount_path,
        "server_threads": threads_for_cores(spec.template_cores),
        "obj_name": name,
        "generation": generation,
        "plan_json": plan_annotation(plan, generation),
        "threads": threads_for(spec.template_cores, config),
        "labels": {**config.common_labels(), LABEL_COMPONENT: COMPONENT_MODEL_SERVER, LABEL_VARIANT: spec.name,
                   **({LABEL_SERVICE: spec.service} if spec.service else {})},
        "L": _label_keys(),
    }
    return [
        _render(env, "k8s/variant-configmap.yaml.j2", f"{name}.configmap.yaml", **ctx),
        _render(env, "k8s/variant-deployment.yaml.j2", f"{name}.deployment.yaml", **ctx),
        _render(env, "k8s/variant-service.yaml.j2", f"{name}.service.yaml", **ctx),
    ]


def render_plan(
    plan: Plan,
    profile: Profile,
    config: RenderConfig,
    generation: int = 1,
    template_cores: Mapping[str, float] | None = None,
    pods: PodRules | None = None,
) -> list[Manifest]:
    """The manifests of every variant in ``plan`` (ConfigMap, Deployment, Service each), and with
    ``router: gateway`` the HTTPRoute whose weights are the plan's shares (``pods``: the policy's
    :class:`PodRules`)."""
    env = environment()
    out: list[Manifest] = []
    for spec in variant_specs(plan, profile, template_cores, config, pods=pods):
        out.extend(render_variant(spec, plan, generation, config, env))
    if config.router == "gateway" and plan.allocations:
        out.extend(render_routes(plan.shares_by_name(), profile, config))
    return out


def render_routes(shares: Mapping[str, float], profile: Profile, config: RenderConfig) -> list[Manifest]:
    """The HTTPRoutes of ``shares``: one (:func:`render_route`), or one per service of a profile with services,
    each over its own variants (a service with none in ``shares`` keeps its route as it is)."""
    if not profile.services:
        return [render_route(shares, config)]
    by_service: dict[str, dict[str, float]] = {}
    for name, share in shares.items():
        by_service.setdefault(profile.service_of(name), {})[name] = share
    return [render_route(by_service[s], config, s) for s in profile.service_names if s in by_service]


def render_route(shares: Mapping[str, float], config: RenderConfig, service: str = "") -> Manifest:
    """The Gateway API HTTPRoute splitting traffic over the variants' Services by ``shares`` (a variant
    on its way out is given with share 0: it stays listed, weight 0, until its Deployment goes). With
    ``service`` (a profile with services), that service's route: its own name, and it matches only the
    service's model paths (``/v1/models/<service>`` and its ``:predict``, ``:classify``, ``:regress``)."""
    name = config.route_name(service)
    labels = {**config.common_labels(), **({LABEL_SERVICE: service} if service else {})}
    ctx = {"c": config, "weights": config.route_weights(shares), "labels": labels, "L": _label_keys(),
           "route_name": name, "service": service}
    return _render(environment(), "k8s/httproute.yaml.j2", f"{name}.httproute.yaml", **ctx)


def render_platform(config: RenderConfig) -> list[Manifest]:
    """Namespace, dispatcher, adapter (with RBAC) and, if enabled, the Prometheus-operator monitors."""
    env = environment()
    ctx = {"c": config, "labels": config.common_labels(), "L": _label_keys()}
    files = [
        ("k8s/namespace.yaml.j2", "namespace.yaml"),
        ("k8s/dispatcher-deployment.yaml.j2", f"{config.dispatcher.name}.deployment.yaml"),
        ("k8s/dispatcher-service.yaml.j2", f"{config.dispatcher.name}.service.yaml"),
        ("k8s/adapter-serviceaccount.yaml.j2", f"{config.adapter.name}.serviceaccount.yaml"),
        ("k8s/adapter-role.yaml.j2", f"{config.adapter.name}.role.yaml"),
        ("k8s/adapter-rolebinding.yaml.j2", f"{config.adapter.name}.rolebinding.yaml"),
        ("k8s/adapter-deployment.yaml.j2", f"{config.adapter.name}.deployment.yaml"),
    ]
    out = [_render(env, t, f, **ctx) for t, f in files]
    if config.monitoring.operator:
        out.append(_render(env, "k8s/podmonitor.yaml.j2", f"{config.instance}-model-servers.podmonitor.yaml",
                           **_podmonitor_vars(config)))
        out.append(_render(env, "k8s/servicemonitor.yaml.j2", f"{config.dispatcher.name}.servicemonitor.yaml", **ctx))
    return out


def _podmonitor_vars(config: RenderConfig) -> dict[str, Any]:
    # The template is shared with the Ansible prometheus role, so it takes plain values, not the config.
    labels = {**config.common_labels(), LABEL_NAME: "infadapter", LABEL_COMPONENT: "monitoring",
              **config.monitoring.selector_labels}
    return {
        "name": f"{config.instance}-model-servers", "namespace": config.namespace, "labels": labels,
        "selector": {LABEL_INSTANCE: config.instance, LABEL_COMPONENT: COMPONENT_MODEL_SERVER},
        "port": "http", "path": "/monitoring/prometheus/metrics", "interval": config.monitoring.scrape_interval,
        "variant_label": True,
    }


def render_prometheus(config: RenderConfig) -> str:
    """A plain scrape config for a standalone Prometheus running in the cluster (pod discovery)."""
    ctx = {"c": config, "L": _label_keys()}
    return environment().get_template("prometheus/cluster.yml.j2").render(**ctx)


def write_manifests(manifests: Iterable[Manifest], out_dir: str | Path) -> list[Path]:
    """Write each manifest to ``out_dir/<filename>``; returns the paths written."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for m in manifests:
        p = d / m.filename
        p.write_text(m.text, encoding="utf-8")
        paths.append(p)
    return paths


def _label_keys() -> dict[str, str]:
    return {
        "name": LABEL_NAME,
        "instance": LABEL_INSTANCE,
        "component": LABEL_COMPONENT,
        "managed_by": LABEL_MANAGED_BY,
        "variant": LABEL_VARIANT,
        "generation": LABEL_GENERATION,
        "plan": ANNOTATION_PLAN,
        "cores": ANNOTATION_CORES,
        "share": ANNOTATION_SHARE,
        "load_time": ANNOTATION_LOAD_TIME,
    }
