#!/usr/bin/env bash
# Launch one xlplastic run on every worker of a Cloud TPU VM slice: one JAX process per worker, all on the
# same revision of xlplastic, each worker's output streamed to its own local log file.
#
#   launch/tpu_pod.sh [OPTIONS] TPU_NAME ZONE CONFIG.yaml RUN_DIR [xlplastic run arguments, e.g. --set k=v]
#
# What it does (--dry-run prints every one of these commands, the scripts it would copy, and runs none):
#   1. checks CONFIG (with the --set overrides) here and flattens its `base:` chain into one file;
#   2. builds a wheel from this checkout as it is (launch/build_wheel.sh; REVISION records the commit, `-dirty`
#      when there are uncommitted edits, and the wheel's SHA-256), or takes --wheel FILE, or installs
#      `git+URL@SHA` (--repo URL --rev SHA);
#   3. copies the wheel, the config and the worker scripts to ~/xlplastic-launch/<stamp>/ on every worker
#      (gcloud compute tpus tpu-vm scp --worker=all) and installs them into a venv there, with jax[tpu];
#   4. starts `python -m xlplastic.cli run` on each worker (one ssh per worker) with XLPLASTIC_DISTRIBUTED=auto
#      and the coordinator, process count and process id that launch/tpu_env.sh reads from the worker's
#      identity (TPU_WORKER_ID / the metadata server), and waits for all of them, streaming worker i's output
#      to LOGS/worker-i.log.
# RUN_DIR must be storage every worker sees (a gcsfuse mount, or gs://... where the run supports it), so
# that all read the same checkpoints; each worker reads only its own rows of every batch.
#
# Options:
#   --dry-run            print the commands, run nothing
#   --wheel FILE         install this wheel instead of building one from the checkout
#   --repo URL --rev SHA install git+URL@SHA (SHA: a commit, 7-40 hex digits; not a branch, which can move)
#   --workers N          the slice's worker count (default: from `gcloud compute tpus tpu-vm describe`)
#   --port P             coordinator port on worker 0 (default 8482)
#   --venv DIR           venv on the workers (default ~/xlplastic-venv; created if absent)
#   --python EXE         the workers' Python >= 3.11 that creates the venv (default python3)
#   --jax SPEC           accelerator package installed with xlplastic (default 'jax[tpu]>=0.10.0,<0.12';
#                        '' for none)
#   --env KEY=VALUE      an environment variable for every worker's run (repeatable)
#   --logs DIR           local folder for the staged files and logs (default runs/launch/TPU_NAME-<stamp>)
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }
die() { echo "tpu_pod.sh: $*" >&2; exit 2; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(dirname "$here")
dry=0 wheel= repo= rev= workers= port=8482 venv='~/xlplastic-venv' python=python3 logs=
jax_pkg='jax[tpu]>=0.10.0,<0.12'
envs=()
while (($#)) && [[ $1 == -* ]]; do
  case $1 in
    --dry-run) dry=1; shift ;;
    --wheel) wheel=${2:?--wheel FILE}; shift 2 ;;
    --repo) repo=${2:?--repo URL}; shift 2 ;;
    --rev) rev=${2:?--rev SHA}; shift 2 ;;
    --workers) workers=${2:?--workers N}; shift 2 ;;
    --port) port=${2:?--port P}; shift 2 ;;
    --venv) venv=${2:?--venv DIR}; shift 2 ;;
    --python) python=${2:?--python EXE}; shift 2 ;;
    --jax) jax_pkg=${2?--jax SPEC}; shift 2 ;;
    --env) [[ ${2:-} == *=* ]] || die "--env expects KEY=VALUE, got '${2:-}'"; envs+=("$2"); shift 2 ;;
    --logs) logs=${2:?--logs DIR}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
(($# >= 4)) || { usage >&2; exit 2; }
tpu=$1 zone=$2 config=$3 run_dir=$4
shift 4
run_args=("$@")

[[ -n $repo && -z $rev ]] && die "--repo needs --rev SHA (the commit every worker installs)"
[[ -n $rev && -z $repo ]] && die "--rev needs --repo URL"
[[ -z $rev || $rev =~ ^[0-9a-fA-F]{7,40}$ ]] || die "--rev '$rev' is not a commit SHA (7-40 hex digits); a branch or tag can move between workers"
[[ -n $repo && -n $wheel ]] && die "--wheel and --repo are alternatives; give one"
[[ -z $workers || $workers =~ ^[1-9][0-9]*$ ]] || die "--workers '$workers' is not a positive number"
[[ $port =~ ^[0-9]+$ ]] || die "--port '$port' is not a number"
[[ -f $config ]] || die "config not found: $config"
[[ -z $wheel || -f $wheel ]] || die "wheel not found: $wheel"

stamp=$(date -u +%Y%m%dT%H%M%SZ)
logs=${logs:-$src/runs/launch/$tpu-$stamp}
rdir=xlplastic-launch/$stamp  # on every worker, relative to the home folder
# The local Python that checks the config and builds the wheel: the checkout's venv when it has one.
bpy=${XLPLASTIC_BUILD_PYTHON:-$([[ -x $src/.venv/bin/python ]] && echo "$src/.venv/bin/python" || echo python3)}
g=(gcloud compute tpus tpu-vm)
at=(--zone "$zone")

# Shell quoting for display and for the generated scripts: bare when safe, else in single quotes.
q() { if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then printf '%s' "$1"; else printf "'%s'" "${1//\'/\'\\\'\'}"; fi; }
redir=  # shell redirection shown after the next command
show() { local a; printf '+'; for a in "$@"; do printf ' %s' "$(q "$a")"; done; printf '%s\n' "${redir:+ $redir}"; redir=; }
run() { show "$@"; ((dry)) || "$@"; }

# --- 1. the config, checked here and flattened (no `base:` chain to copy) -----------------------------
run mkdir -p "$logs"
sets=()
for ((i = 0; i < ${#run_args[@]}; i++)); do
  case ${run_args[i]} in
    --set) sets+=("${run_args[i + 1]:-}"); i=$((i + 1)) ;;
    --set=*) sets+=("${run_args[i]#--set=}") ;;
  esac
done
run "$bpy" "$here/flatten_config.py" "$config" "$logs/config.yaml" ${sets[@]+"${sets[@]}"}

# --- 2. what every worker installs -------------------------------------------------------------------
if [[ -n $repo ]]; then
  pkg="xlplastic @ git+$repo@$rev"
  ((dry)) || echo "$repo@$rev" >"$logs/REVISION"
  staged=(REVISION)
elif [[ -n $wheel ]]; then
  pkg_file=$(basename "$wheel")
  run cp "$wheel" "$logs/$pkg_file"
  ((dry)) || echo "wheel $pkg_file sha256=$(sha256sum "$wheel" | cut -d' ' -f1)" >"$logs/REVISION"
  staged=("$pkg_file" REVISION)
else
  if ((dry)); then
    echo "# build a wheel from the checkout (launch/build_wheel.sh $src $logs):"
    XLPLASTIC_BUILD_PYTHON=$bpy "$here/build_wheel.sh" --dry-run "$src" "$logs" | sed 's/^/+ /' | sed '$d'
    pkg_file=$(basename "$(XLPLASTIC_BUILD_PYTHON=$bpy "$here/build_wheel.sh" --dry-run "$src" "$logs" | tail -n1)")
  else
    show "$here/build_wheel.sh" "$src" "$logs"
    pkg_file=$(basename "$(XLPLASTIC_BUILD_PYTHON=$bpy "$here/build_wheel.sh" "$src" "$logs" | tail -n1)")
    echo "  $(cat "$logs/REVISION")"
  fi
  staged=("$pkg_file" REVISION)
fi
[[ -z $repo ]] && pkg="./$rdir/$pkg_file"

# --- 3. the worker scripts ------------------------------------------------------------------------------
venv_sh=$(q "$venv"); [[ $venv == '~/'* ]] && venv_sh="\$HOME/$(q "${venv#\~/}")"
jax_args=(); [[ -n $jax_pkg ]] && jax_args=("$jax_pkg")
check_sha=
if [[ -z $repo ]]; then  # the copy each worker got is the file built here
  check_sha="want=\$(sed -n 's/.*sha256=//p' $(q "$rdir")/REVISION); have=\$(sha256sum $(q "$pkg") | cut -d' ' -f1)
[[ \$want == \"\$have\" ]] || { echo \"worker \$(hostname): $(q "$pkg") has SHA-256 \$have, not \$want\" >&2; exit 1; }
"
fi
install_sh="#!/usr/bin/env bash
# xlplastic launch $stamp: install $(head -c 200 <<<"${pkg_file:-$pkg}") into the worker's venv.
set -euo pipefail
cd \"\$HOME\"
export PYTHONSAFEPATH=1
venv=$venv_sh
if [[ ! -x \$venv/bin/python ]]; then
  $(q "$python") -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    { echo \"worker \$(hostname): $(q "$python") is \$($(q "$python") -V 2>&1); xlplastic needs Python >= 3.11 (--python)\" >&2; exit 1; }
  $(q "$python") -m venv \"\$venv\"
fi
${check_sha}\"\$venv/bin/python\" -m pip install -q $(q "$pkg")$(for a in ${jax_args[@]+"${jax_args[@]}"}; do printf ' %s' "$(q "$a")"; done)
\"\$venv/bin/python\" -m pip install -q --force-reinstall --no-deps $(q "$pkg")  # this revision, even at the same version
echo \"worker \$(hostname): \$(\"\$venv/bin/python\" -c 'import xlplastic; print(xlplastic.__file__)'), $(q "$rdir")/REVISION: \$(cat $(q "$rdir")/REVISION)\"
"
env_lines=
for kv in ${envs[@]+"${envs[@]}"}; do env_lines+="export ${kv%%=*}=$(q "${kv#*=}")"$'\n'; done
run_sh="#!/usr/bin/env bash
# xlplastic launch $stamp: this worker's process of the run.
set -euo pipefail
cd \"\$HOME\"
export XLPLASTIC_DISTRIBUTED=auto PYTHONSAFEPATH=1  # (no xlplastic from the working folder)
eval \"\$(bash $(q "$rdir")/tpu_env.sh $port)\"  # XLPLASTIC_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID
${env_lines}echo \"worker \$(hostname): process \${XLPLASTIC_PROCESS_ID:-?} of \${XLPLASTIC_NUM_PROCESSES:-?}, coordinator \${XLPLASTIC_COORDINATOR:-auto}, revision \$(cat $(q "$rdir")/REVISION)\"
echo \$\$ > $(q "$rdir")/run.pid  # kill -TERM \$(cat $(q "$rdir")/run.pid): checkpoint and stop
exec $venv_sh/bin/python -m xlplastic.cli run $(q "$rdir")/config.yaml --run-dir $(q "$run_dir")$(for a in ${run_args[@]+"${run_args[@]}"}; do printf ' %s' "$(q "$a")"; done)
"
if ((dry)); then
  printf '# %s/install.sh:\n%s\n# %s/run.sh:\n%s\n' "$logs" "$install_sh" "$logs" "$run_sh"
else
  printf '%s' "$install_sh" >"$logs/install.sh"
  printf '%s' "$run_sh" >"$logs/run.sh"
  cp "$here/tpu_env.sh" "$logs/tpu_env.sh"
fi
staged+=(config.yaml tpu_env.sh install.sh run.sh)

# --- 4. copy, install, run --------------------------------------------------------------------------------
if [[ -z $workers ]]; then
  show "${g[@]}" describe "$tpu" "${at[@]}" '--format=value(networkEndpoints[].ipAddress)'
  if ((dry)); then
    workers=N
  else
    ips=$("${g[@]}" describe "$tpu" "${at[@]}" '--format=value(networkEndpoints[].ipAddress)')
    read -ra ips_list <<<"${ips//[;,]/ }"
    workers=${#ips_list[@]}
    ((workers > 0)) || die "gcloud describe found no workers for $tpu in $zone"
  fi
fi
echo "# $tpu: $workers worker(s); staged in $logs; on the workers: ~/$rdir"
run "${g[@]}" ssh "$tpu" "${at[@]}" --worker=all --command "mkdir -p $rdir"
run "${g[@]}" scp "${staged[@]/#/$logs/}" "$tpu:$rdir/" "${at[@]}" --worker=all
redir="> $logs/install.log 2>&1"
show "${g[@]}" ssh "$tpu" "${at[@]}" --worker=all --command "bash $rdir/install.sh"
if ((!dry)); then
  "${g[@]}" ssh "$tpu" "${at[@]}" --worker=all --command "bash $rdir/install.sh" >"$logs/install.log" 2>&1 ||
    { tail -n 30 "$logs/install.log" >&2; die "install failed on a worker (log: $logs/install.log)"; }
  grep '^worker ' "$logs/install.log" || true
fi

if ((dry)); then
  for ((i = 0; i < ${workers/N/1}; i++)); do
    redir="> $logs/worker-$i.log 2>&1 &"
    show "${g[@]}" ssh "$tpu" "${at[@]}" "--worker=$i" --command "bash $rdir/run.sh"
  done
  [[ $workers == N ]] && echo "# ... the same with --worker=\$i > $logs/worker-\$i.log for every worker i < N"
  echo "# then wait for every worker; exit with the first failure's status"
  exit 0
fi
pids=()
stop() { trap - INT TERM; echo "tpu_pod.sh: interrupted; stopping the local streams (the runs go on: stop them with" \
  "${g[*]} ssh $tpu --zone $zone --worker=all --command 'kill -TERM \$(cat $rdir/run.pid)')" >&2
  kill "${pids[@]}" 2>/dev/null; exit 130; }
trap stop INT TERM
for ((i = 0; i < workers; i++)); do
  redir="> $logs/worker-$i.log 2>&1 &"
  show "${g[@]}" ssh "$tpu" "${at[@]}" "--worker=$i" --command "bash $rdir/run.sh"
  "${g[@]}" ssh "$tpu" "${at[@]}" "--worker=$i" --command "bash $rdir/run.sh" >"$logs/worker-$i.log" 2>&1 &
  pids+=($!)
done
echo "# follow with: tail -f $logs/worker-0.log"
status=0
for ((i = 0; i < workers; i++)); do
  rc=0
  wait "${pids[i]}" || rc=$?
  if ((rc)); then
    echo "tpu_pod.sh: worker $i exited $rc; the end of $logs/worker-$i.log:" >&2
    tail -n 20 "$logs/worker-$i.log" >&2
    ((status)) || status=$rc
  fi
done
((status)) || tail -n 1 "$logs/worker-0.log"
exit $status
