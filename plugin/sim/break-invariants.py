#!/usr/bin/env python3
"""Break one invariant on purpose and show that the model tests catch it.

    plugin/sim/break-invariants.py NAME     apply break NAME, run the model
                                            tests, print the failure, revert
    plugin/sim/break-invariants.py --list   list the breaks

Each break is a textual edit of one source file; the file is restored
afterwards whatever happens. docs/testing.md records the results.
"""
import subprocess, sys, re, os
here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(here)
top = os.path.dirname(root)
breaks = {
 'B1-teardown-skips-revoke': [
   ('core/src/server.rs', '    report.note(hm.revoke(dom, RevokeRange::All));\n', '    let _ = &hm; // BROKEN: no revoke\n'),
   ('core/src/server.rs', '        report.note(self.hm.revoke(&dom, RevokeRange::All));\n', '        // BROKEN: no revoke\n'),
 ],
 'B2-bar-move-skips-revoke': [
   ('core/src/server.rs', '            self.revoke_range(old.clone())?;\n', '            // BROKEN: no revoke of the old range\n'),
 ],
 'B3-teardown-looks-up-identity-by-domid': [
   ('core/src/server.rs', '    let mut report = TeardownReport::default();\n    info!(%dom, "teardown: revoking every lent page");',
    '    let mut report = TeardownReport::default();\n    let fresh = dm.lookup(dom.domid).ok().flatten(); // BROKEN\n    let dom = &fresh.unwrap_or(*dom);\n    info!(%dom, "teardown: revoking every lent page");'),
 ],
 'B4-platform-skips-uid-check': [
   ('sim/tests/model/main.rs', '        run(&ops, 1 << 20, SimOptions::default())?;', '        run(&ops, 1 << 20, SimOptions { broken_skip_identity_check: true, ..SimOptions::default() })?;'),
 ],
 'B5-xen-ignores-resend-bound': [
   ('sim/src/exec.rs', 'if req.kind != IOREQ_TYPE_COPY || resends > XEN_IOREQ_MAX_RETRIES {', 'if req.kind != IOREQ_TYPE_COPY { // BROKEN: no bound'),
 ],
 'B6-lent-page-limit-ignored': [
   ('core/src/server.rs', '        let mut remaining = max.saturating_sub(self.ledger.lent_pages());', '        let mut remaining = u64::MAX; // BROKEN\n        let _ = max;'),
   ('core/src/server.rs', '                Ok(q) => remaining = max.saturating_sub(q.lent_pages),', '                Ok(_) => {}'),
 ],
 'B7-unregister-without-notifier': [
   ('sim/src/lib.rs', '        for f in &r.frames {\n            w.notifier_revoke(*f);\n            w.backend_release(*f);', '        for f in &r.frames {\n            // BROKEN: no notifier\n            w.backend_release(*f);'),
 ],
 'B8-migration-without-notifier': [
   ('sim/src/lib.rs', '        w.notifier_revoke(old);\n        w.backend_release(old);', '        // BROKEN: no notifier; the backend keeps the old frame\n        let _ = old;'),
 ],
 'B9-reference-not-dropped-on-revoke': [
   ('sim/src/world.rs', '            fr.refs = fr.refs.saturating_sub(1);\n            fr.lent_at = None;', '            // BROKEN: reference kept\n            fr.lent_at = None;'),
 ],
 'B10-old-retry-rule': [
   ('sim/tests/model/main.rs', '        run(&ops, 1 << 20, SimOptions::default())?;', '        run(&ops, 1 << 20, SimOptions { retry_rule: gpu_hostmem_sim::RetryRule::Reexecute, ..SimOptions::default() })?;'),
 ],
 'B11-data-is-ptr-answered-ready': [
   ('core/src/server.rs', '        if req.data_is_ptr {\n            self.counters.retries += 1;\n            Response::retry(0)', '        if false { // BROKEN: IORESP_READY, no copy\n            Response::retry(0)'),
 ],
}
if len(sys.argv) != 2 or sys.argv[1] not in list(breaks) + ['--list']:
    sys.exit('usage: break-invariants.py NAME | --list\n' + '\n'.join(breaks))
if sys.argv[1] == '--list':
    print('\n'.join(breaks))
    sys.exit(0)
name = sys.argv[1]
saved = {}
try:
    for f, old, new in breaks[name]:
        p = os.path.join(root, f)
        s = saved.get(p) or open(p).read()
        saved.setdefault(p, s)
        cur = open(p).read()
        assert old in cur, (name, f, old)
        open(p, 'w').write(cur.replace(old, new, 1))
    env = dict(os.environ, PROPTEST_CASES='256', RUST_BACKTRACE='0')
    r = subprocess.run(['cargo', 'test', '-j2', '-q', '-p', 'gpu-hostmem-sim', '--test', 'model', '--', '--test-threads=2'],
                       cwd=top, env=env, capture_output=True, text=True, timeout=900)
    out = r.stdout + r.stderr
    lines = [l for l in out.splitlines() if 'Test failed' in l or 'test invariants' in l or 'test strategies' in l or 'test result' in l or 'error[' in l]
    mins = re.findall(r'minimal failing input: ops = \[(.*?)\n\]', out, re.S)
    print('## ' + name)
    print('exit', r.returncode)
    for l in lines: print(l)
    if mins:
        print('minimal:', re.sub(r'\s+', ' ', mins[0])[:1200])
finally:
    for p, s in saved.items():
        open(p, 'w').write(s)
    subprocess.run(['rm', '-rf', os.path.join(root, 'sim/tests/proptest-regressions')])
