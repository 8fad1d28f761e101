package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/testenv"
	"github.com/gondolin/gondolin/internal/testutil"
	"github.com/gondolin/gondolin/sessions"
	"github.com/gondolin/gondolin/vm"
)

// supervisorStatus reads `supervisor status --json`.
func supervisorStatus(t *testing.T, home layout.Home) sessions.SupervisorStatus {
	t.Helper()
	var st sessions.SupervisorStatus
	if err := json.Unmarshal([]byte(mustRun(t, home, "supervisor", "status", "--json")), &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// TestExecSurvivesABrokenTemplate breaks the home's saved template (its
// state cut in half, as a full disk or a crash would leave it): exec still
// runs the command, on a cold boot, with a one-line note; the template is
// moved aside, the supervisor rebuilds it in the background and says so,
// and the next exec clones the new one.
func TestExecSurvivesABrokenTemplate(t *testing.T) {
	home := testenv.PrivateHome(t)
	t.Cleanup(func() { stopSupervisor(t, home) })
	if r := gondolin(t, home, "", "exec", "--", "true"); r.code != 0 {
		t.Fatalf("first exec: %+v", r)
	}
	states, _ := filepath.Glob(filepath.Join(home.Templates(), "*", "state.zst"))
	if len(states) != 1 {
		t.Fatalf("templates after the first exec: %v", states)
	}
	st, err := os.Stat(states[0])
	if err != nil {
		t.Fatal(err)
	}
	os.Truncate(states[0], st.Size()/2)

	r := gondolin(t, home, "", "exec", "--", "echo", "still runs")
	if r.code != 0 || r.stdout != "still runs\n" {
		t.Fatalf("exec with a broken template: %+v", r)
	}
	if strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "template of default:latest broke") || !strings.Contains(r.stderr, "booting cold") {
		t.Fatalf("stderr %q: want one line saying the template broke", r.stderr)
	}
	testutil.WaitFor(t, 3*time.Minute, "a ready template", func() bool {
		for _, tm := range supervisorStatus(t, home).Templates {
			if tm.State == vm.TemplateReady {
				return true
			}
		}
		return false
	})
	status := mustRun(t, home, "supervisor", "status")
	if !strings.Contains(status, "broken at") || !strings.Contains(status, "qemu exited") || !strings.Contains(status, ": ready, built") {
		t.Fatalf("supervisor status does not tell the story:\n%s", status)
	}
	r = gondolin(t, home, "", "exec", "--", "echo", "cloned")
	if r.code != 0 || r.stdout != "cloned\n" || r.stderr != "" {
		t.Fatalf("exec after the rebuild: %+v", r)
	}
	assertNothingLeft(t, home)
}
