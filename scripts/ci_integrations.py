#!/usr/bin/env python3
"""KAHN's CI integrations, run as CI would run them, against a real `kahn serve`.

The GitHub Action (action.yml) and the GitLab template (ci/gitlab/kahn.gitlab-ci.yml) are read
as YAML and their shell steps run with bash under a simulated Actions / GitLab environment
(the variables those systems set, `${{ inputs.* }}` filled from the action's inputs and
defaults), with this build's `kahn` on PATH. Checked: two matrix legs of one job are two runs;
pushing a leg again in the same attempt adds nothing; a new attempt is a new run; two GitLab
jobs are two runs and a retried push of one adds nothing. Usage: ci_integrations.py KAHN_BIN
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
KAHN = os.path.abspath(sys.argv[1])
FAILURES = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        FAILURES.append(what)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kahn(*args, env=None):
    out = subprocess.run([KAHN, *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"kahn {' '.join(args)} failed:\n{out.stdout}{out.stderr}")
    return out.stdout


def fill(text, inputs):
    """`${{ inputs.NAME }}` replaced; any other expression is a failure of the simulation."""
    text = re.sub(r"\$\{\{\s*inputs\.([A-Za-z0-9_-]+)\s*\}\}", lambda m: inputs[m.group(1)], text)
    if "${{" in text:
        raise SystemExit(f"an expression the simulation does not know: {text}")
    return text


def bash(script, env, cwd):
    return subprocess.run(["bash", "--noprofile", "--norc", "-e", "-c", script],
                          env=env, cwd=cwd, capture_output=True, text=True)


def main():
    tmp = tempfile.mkdtemp(prefix="kahn-ci-")
    try:
        run(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if FAILURES:
        print(f"ci integrations: {len(FAILURES)} failed", file=sys.stderr)
        sys.exit(1)
    print("ci integrations: all passed")


def run(tmp):
    db = f"sqlite://{tmp}/kahn.db"
    key = json.loads(kahn("bridge", "onboard", "choco", "--db", db, "--json"))["api_key"]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(os.path.join(tmp, "serve.log"), "w")
    server = subprocess.Popen([KAHN, "serve", "--db", db, "--listen", f"127.0.0.1:{port}"],
                              stdout=log, stderr=log)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{url}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        simulate(tmp, url, key)
    finally:
        server.terminate()
        server.wait(timeout=30)


def runs(url, key):
    env = dict(os.environ, KAHN_API_KEY=key)
    listed = json.loads(kahn("runs", "list", "--url", url, "--json", "--limit", "100", env=env))
    return {r["run_id"]: r for r in listed["runs"]}


def simulate(tmp, url, key):
    bindir = os.path.join(tmp, "bin")
    os.makedirs(bindir)
    os.symlink(KAHN, os.path.join(bindir, "kahn"))
    work = os.path.join(tmp, "work")
    os.makedirs(os.path.join(work, "out", "run"))
    with open(os.path.join(work, "out", "run", "transitions.ndjson"), "w") as f:
        f.write('{"ts":"2026-12-01T10:00:00Z","node":"test","to":"running"}\n')
        f.write('{"ts":"2026-12-01T10:00:09Z","node":"test","from":"running","to":"succeeded"}\n')
    base = {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": tmp, "KAHN_CACHE_DIR": os.path.join(tmp, "cache")}

    # ------------------------------------------------------------------ GitHub Actions
    action = yaml.safe_load(open(os.path.join(ROOT, "action.yml")))
    check(action["runs"]["using"] == "composite", "action.yml is a composite action")
    defaults = {k: str(v.get("default", "")) for k, v in action["inputs"].items()}

    def leg(matrix, attempt="1"):
        inputs = dict(defaults, url=url, **{"api-key": key}, profile="choco", path="out/run",
                      matrix=json.dumps(matrix) if matrix is not None else "")
        output = os.path.join(tmp, "github_output")
        open(output, "w").close()
        env = dict(base, GITHUB_ACTIONS="true", GITHUB_REPOSITORY="acme/choco",
                   GITHUB_RUN_ID="4242", GITHUB_RUN_ATTEMPT=attempt, GITHUB_JOB="test",
                   GITHUB_SHA="0123abcd", GITHUB_REF="refs/heads/main",
                   GITHUB_SERVER_URL="https://github.com", GITHUB_OUTPUT=output,
                   GITHUB_PATH=os.path.join(tmp, "github_path"), RUNNER_TOOL_CACHE=os.path.join(tmp, "tools"))
        said = ""
        for step in action["runs"]["steps"]:
            step_env = dict(env, **{k: fill(str(v), inputs) for k, v in step.get("env", {}).items()})
            done = bash(fill(step["run"], inputs), step_env, work)
            said += done.stdout + done.stderr
            if done.returncode != 0:
                check(False, f"action step {step['name']!r} ran: {said}")
                return None, said
        outputs = dict(l.split("=", 1) for l in open(output).read().splitlines() if "=" in l)
        return outputs.get("run-id"), said

    a, said = leg({"os": "ubuntu-24.04", "rust": "1.94"})
    check("kahn: " in said and "cargo install" not in said, "the action uses the kahn on PATH")
    b, _ = leg({"os": "ubuntu-24.04", "rust": "stable"})
    check(bool(a) and bool(b) and a != b, f"two matrix legs, two run ids: {a} / {b}")
    stored = runs(url, key)
    check(a in stored and b in stored, "both legs are stored")
    check(stored.get(a, {}).get("labels", {}).get("matrix") == "os=ubuntu-24.04,rust=1.94",
          f"the leg's matrix values are a label: {stored.get(a, {}).get('labels')}")
    again, said = leg({"os": "ubuntu-24.04", "rust": "1.94"})
    check(again == a and '"appended": 0' in said, "the same leg pushed again adds nothing")
    second, _ = leg({"os": "ubuntu-24.04", "rust": "1.94"}, attempt="2")
    check(second not in (a, b) and second in runs(url, key), "a new attempt is a new run")
    single, _ = leg(None)
    check(single == "choco:gh:acme:choco:4242:1:test", f"no matrix: the job's own run ({single})")

    # ------------------------------------------------------------------ GitLab CI
    template = yaml.safe_load(open(os.path.join(ROOT, "ci", "gitlab", "kahn.gitlab-ci.yml")))
    job = template[".kahn-push"]
    check("after_script" in job and "script" not in job,
          "the push is the job's after_script, so a failed job pushes too")
    script = "\n".join(job["after_script"])

    def gitlab_job(job_id):
        env = dict(base, **{k: str(v) for k, v in job["variables"].items()})
        env.update(GITLAB_CI="true", CI_PROJECT_PATH="acme/choco", CI_PIPELINE_ID="77",
                   CI_JOB_ID=job_id, CI_COMMIT_SHA="0123abcd", CI_COMMIT_REF_NAME="main",
                   CI_JOB_URL=f"https://gitlab.example.com/acme/choco/-/jobs/{job_id}",
                   CI_PROJECT_DIR=work, KAHN_URL=url, KAHN_API_KEY=key, KAHN_PATH="out/run")
        # GitLab runs after_script with the image's shell: POSIX sh here (dash), not bash.
        done = subprocess.run(["sh", "-c", script], env=env, cwd=work, capture_output=True, text=True)
        if done.returncode != 0:
            check(False, f"the GitLab template's script ran: {done.stdout}{done.stderr}")
            return None, ""
        return json.loads(done.stdout).get("run_id"), done.stdout

    x, _ = gitlab_job("901")
    y, _ = gitlab_job("902")
    check(bool(x) and bool(y) and x != y, f"two GitLab jobs (e.g. matrix legs), two runs: {x} / {y}")
    retried, said = gitlab_job("901")
    check(retried == x and '"appended": 0' in said, "a push again in the same job adds nothing")


if __name__ == "__main__":
    main()
