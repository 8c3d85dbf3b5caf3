"""Flink, the native stack's stream engine: a session cluster of one JobManager, one TaskManager and the SQL Gateway,
each a JVM on the jars `make setup` resolved from Maven Central into stack/lib/flink (flink-dist is not served
there), with the job's functions (flink/udf) from stack/lib/flink-udf.

Everything binds to 127.0.0.1. The JobManager's REST API and web UI are on FLINK_PORT, the gateway on
FLINK_GATEWAY_PORT. Checkpoints and savepoints live under var/flink/. More TaskManagers (here or on other machines,
pointed at the JobManager's RPC address) add task slots; see the README.

Metrics: Flink's JMX reporter publishes them as MBeans inside each JVM, and the JMX exporter agent in the JobManager
and the TaskManager serves them (monitoring/jmx/flink.yml) behind the scrapers' login. Flink's own Prometheus
reporter is not used: it listens on every interface and asks for no login.
"""

from __future__ import annotations

import shutil
import subprocess

from cryptopipe.settings import Settings
from ops import flink_tls
from ops.process import StackError
from ops.services import CONFIG_DIR, LIB_DIR, JavaService

# What Flink's own start scripts pass on Java 17 (flink-dist's config.sh): its serializers and RPC reach into these.
JAVA_17_OPENS = [
    *(f"--add-exports={m}=ALL-UNNAMED" for m in (
        "java.base/sun.net.util", "java.rmi/sun.rmi.registry", "jdk.compiler/com.sun.tools.javac.api",
        "jdk.compiler/com.sun.tools.javac.file", "jdk.compiler/com.sun.tools.javac.parser",
        "jdk.compiler/com.sun.tools.javac.tree", "jdk.compiler/com.sun.tools.javac.util",
        "java.security.jgss/sun.security.krb5")),
    *(f"--add-opens=java.base/{p}=ALL-UNNAMED" for p in (
        "java.lang", "java.net", "java.io", "java.nio", "sun.nio.ch", "java.lang.reflect", "java.text", "java.time",
        "java.util", "java.util.concurrent", "java.util.concurrent.atomic", "java.util.concurrent.locks")),
]


def config(settings: Settings, tls: flink_tls.FlinkTls | None = None) -> dict[str, str]:
    """stack/config/flink.yaml with the addresses, ports, memory and folders of these settings, and `tls`'s REST
    options (mutual TLS on the JobManager's REST API and the SQL Gateway, which reads the same options)."""
    host, flink_dir = settings.flink_host, settings.var_dir / "flink"
    return read_flat_yaml(CONFIG_DIR / "flink.yaml") | {
        "jobmanager.rpc.address": host, "jobmanager.rpc.port": str(settings.flink_rpc_port),
        "jobmanager.bind-host": host, "taskmanager.host": host, "taskmanager.bind-host": host,
        "rest.address": host, "rest.bind-address": host, "rest.port": str(settings.flink_port),
        "sql-gateway.endpoint.rest.address": host, "sql-gateway.endpoint.rest.bind-address": host,
        "sql-gateway.endpoint.rest.port": str(settings.flink_gateway_port),
        "jobmanager.memory.process.size": settings.flink_jobmanager_memory,
        "taskmanager.memory.process.size": settings.flink_taskmanager_memory,
        "taskmanager.numberOfTaskSlots": str(settings.flink_task_slots),
        "parallelism.default": str(settings.flink_parallelism),
        "execution.checkpointing.interval": f"{int(settings.flink_checkpoint_interval_s * 1000)} ms",
        "execution.checkpointing.dir": (flink_dir / "checkpoints").as_uri(),
        "execution.checkpointing.savepoint-dir": (flink_dir / "savepoints").as_uri(),
        "io.tmp.dirs": str(flink_dir / "tmp" / "io"), "web.tmpdir": str(flink_dir / "tmp" / "web"),
        # RocksDB's own LOG files (one per operator and job) default to Flink's log folder, i.e. logs/.
        "state.backend.rocksdb.log.dir": str(flink_dir / "rocksdb-logs"),
        # MBeans in the JVM only (no port: no JMX server of its own); the JMX exporter agent reads them.
        "metrics.reporter.jmx.factory.class": "org.apache.flink.metrics.jmx.JMXReporterFactory",
    } | (tls.flink_options() if tls else {})


def read_flat_yaml(path) -> dict[str, str]:
    """Flink's config.yaml in its flat form (one `key: value` per line), which is all stack/config/flink.yaml uses."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and ":" in line:
            key, value = line.split(":", 1)
            out[key.strip()] = value.strip()
    return out


class FlinkService(JavaService):
    """One Flink process; the three share the config folder var/run/flink and the classpath."""

    jars = "flink"
    entry = ""
    metrics_rules = "flink"

    @property
    def conf_dir(self):
        return self.run_dir / "flink"

    @property
    def tmp_dir(self):
        return self.s.var_dir / "flink" / "tmp" / self.name

    def classpath(self) -> str:
        if not list((LIB_DIR / "flink-udf").glob("cryptopipe-flink-udf.jar")):
            raise StackError("The stream job's functions are missing from stack/lib/flink-udf: run `make setup`.")
        return f"{super().classpath()}:{LIB_DIR / 'flink-udf' / '*'}"

    def write_config(self) -> None:
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        tls = flink_tls.ensure(self.s.flink_tls_dir, self.s.java)
        lines = [f"{k}: {v}" for k, v in config(self.s, tls).items()]
        conf = self.conf_dir / "config.yaml"
        conf.touch(mode=0o600)  # it holds the stores' password
        conf.chmod(0o600)
        conf.write_text("# Written by ops.flink from stack/config/flink.yaml; edit that, not this.\n"
                        + "\n".join(lines) + "\n")
        shutil.copy(CONFIG_DIR / "flink-log4j.properties", self.conf_dir / "log4j.properties")
        for sub in ("checkpoints", "savepoints", "tmp/io", "tmp/web", "rocksdb-logs"):
            (self.s.var_dir / "flink" / sub).mkdir(parents=True, exist_ok=True)

    def memory_args(self) -> tuple[list[str], list[str]]:
        """(JVM options, -D options) for this process's memory, computed from the config as Flink's scripts do."""
        return [], []

    def start(self) -> None:
        self.write_config()
        # A kill -9 leaves the RPC and planner jars each start unpacks (25-50 MB); nothing of ours runs now.
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.tmp_dir.mkdir(parents=True)
        jvm_opts, dynamic = self.memory_args()
        argv = [self.java(), *jvm_opts, "-XX:+UseG1GC", f"-Djava.io.tmpdir={self.tmp_dir}",
                f"-Dlog.file={self.log_file}", f"-Dlog4j2.configurationFile={(self.conf_dir / 'log4j.properties').as_uri()}",
                f"-Dcryptopipe.service={self.name}", *JAVA_17_OPENS, *self.metrics_agent(), "-cp", self.classpath(),
                self.entry, *self.args(), *dynamic]
        self.spawn(argv, env={"FLINK_CONF_DIR": str(self.conf_dir)}, stdout=self.s.logs_dir / f"{self.name}.out")

    def args(self) -> list[str]:
        return ["--configDir", str(self.conf_dir)]

    def bash_java_utils(self, command: str) -> tuple[list[str], list[str]]:
        out = subprocess.run(
            [self.java(), "-cp", self.classpath(), "org.apache.flink.runtime.util.bash.BashJavaUtils", command,
             "--configDir", str(self.conf_dir)], capture_output=True, text=True, timeout=120)
        lines = [line.split("BASH_JAVA_UTILS_EXEC_RESULT:", 1)[1] for line in out.stdout.splitlines()
                 if "BASH_JAVA_UTILS_EXEC_RESULT:" in line]
        if out.returncode != 0 or len(lines) < 2:
            raise StackError(f"Flink could not size the memory of {self.name} ({command}): "
                             f"{(out.stderr or out.stdout).strip()[-300:]}; check FLINK_*_MEMORY in .env.")
        return lines[0].split(), lines[1].split()


class FlinkJobManager(FlinkService):
    name, port_var, marker = "flink-jobmanager", "FLINK_PORT", "StandaloneSessionClusterEntrypoint"
    entry = "org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint"
    metrics_port_var = "FLINK_JOBMANAGER_METRICS_PORT"

    @property
    def port(self) -> int:
        return self.s.flink_port

    @property
    def metrics_port(self) -> int:
        return self.s.flink_jobmanager_metrics_port

    def memory_args(self):
        return self.bash_java_utils("GET_JM_RESOURCE_PARAMS")

    def ready(self) -> bool:
        return flink_tls.session(self.s).get(f"{self.s.flink_url}/overview", timeout=2).status_code == 200


class FlinkTaskManager(FlinkService):
    name, port_var, marker = "flink-taskmanager", "", "TaskManagerRunner"
    entry = "org.apache.flink.runtime.taskexecutor.TaskManagerRunner"
    metrics_port_var = "FLINK_TASKMANAGER_METRICS_PORT"

    @property
    def metrics_port(self) -> int:
        return self.s.flink_taskmanager_metrics_port

    def memory_args(self):
        return self.bash_java_utils("GET_TM_RESOURCE_PARAMS")

    def ready(self) -> bool:
        overview = flink_tls.session(self.s).get(f"{self.s.flink_url}/overview", timeout=2).json()
        return overview.get("slots-total", 0) >= self.s.flink_task_slots


class FlinkGateway(FlinkService):
    name, port_var, marker = "flink-sql-gateway", "FLINK_GATEWAY_PORT", "SqlGateway"
    entry = "org.apache.flink.table.gateway.SqlGateway"

    @property
    def port(self) -> int:
        return self.s.flink_gateway_port

    def memory_args(self):
        return ["-Xms256m", "-Xmx512m"], []

    def args(self) -> list[str]:
        return []  # it reads FLINK_CONF_DIR

    def ready(self) -> bool:
        return flink_tls.session(self.s).get(f"{self.s.flink_gateway_url}/v1/info", timeout=2).status_code == 200


def services(settings: Settings) -> list[JavaService]:
    return [FlinkJobManager(settings), FlinkTaskManager(settings), FlinkGateway(settings)]
