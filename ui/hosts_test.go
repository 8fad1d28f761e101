package ui

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/charmbracelet/x/exp/golden"
	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/sessions"
)

// farBackend is a second host's supervisor: one live session.
func farBackend() *fakeBackend {
	f := newFake(sessions.Session{ID: "fa12fa12fa12", Name: "farsess", State: sessions.Live, PID: 77, Created: epoch.Add(-10 * time.Hour),
		Image: "debian:12", Policy: "no network", PTYs: []sessions.PTY{{ID: 1, Running: true, Main: true}}})
	f.screens["fa12fa12fa12/1"] = screenOf(24, 80, "root@farsess:~# uname -n", "far")
	return f
}

// twoHosts is a dashboard's hosts: this machine (sampleBackend) and
// "far", each attaching through its own recorder.
func twoHosts(local, far *fakeBackend) ([]Host, *attachRecorder, *attachRecorder) {
	lr, fr := &attachRecorder{}, &attachRecorder{}
	return []Host{
		{Name: DefaultHost, Backend: local, Attach: lr.attach},
		{Name: "far", Backend: far, Attach: fr.attach, Elsewhere: true},
	}, lr, fr
}

// rowLine is the table line that names a session, or "".
func rowLine(screen, name string) string {
	for _, l := range strings.Split(screen, "\n") {
		if strings.Contains(l, " "+name+" ") {
			return l
		}
	}
	return ""
}

// settleHosts waits until every host has been listed and the preview
// is current.
func (h *harness) settleHosts() {
	h.t.Helper()
	h.waitUntil("every host listed", func(m *Model) bool {
		id, pty := m.previewTarget()
		for _, hs := range m.hosts {
			if !hs.loaded || hs.listing || !hs.eventsUp {
				return false
			}
		}
		return len(m.fetching) == 0 && (pty == 0 || (m.preview.session == id && m.preview.pty == pty)) && !m.statusReading && m.poolKnown
	})
}

// selectName filters the table down to one session and selects it.
func (h *harness) selectName(name string) {
	h.t.Helper()
	h.keys("/", name, "enter")
	h.waitUntil("selected "+name, func(m *Model) bool { s, ok := m.current(); return ok && s.Name == name })
}

// TestHostColumn: the HOST column shows only when there is more than one
// host, and then names each row's.
func TestHostColumn(t *testing.T) {
	t.Run("one host", func(t *testing.T) {
		h := start(t, sampleBackend(), 120, 30)
		if strings.Contains(h.screen(), "HOST") {
			t.Fatalf("HOST column with one host:\n%s", h.screen())
		}
	})
	t.Run("two hosts", func(t *testing.T) {
		hosts, _, _ := twoHosts(sampleBackend(), farBackend())
		h := startHosts(t, hosts, 120, 30)
		h.settleHosts()
		scr := h.screen()
		if !strings.Contains(scr, "HOST") {
			t.Fatalf("no HOST column:\n%s", scr)
		}
		for name, host := range map[string]string{"api": "default", "build": "default", "farsess": "far"} {
			if l := rowLine(scr, name); !strings.Contains(l, " "+host+" ") {
				t.Errorf("row of %s does not say host %s: %q", name, host, l)
			}
		}
		golden.RequireEqual(t, []byte(scr))
	})
}

// TestHostFilter: / matches a row's host too.
func TestHostFilter(t *testing.T) {
	hosts, _, _ := twoHosts(sampleBackend(), farBackend())
	hosts[1].Name = "rack" // in no session's name, image or label: only the host matches
	h := startHosts(t, hosts, 120, 30)
	h.settleHosts()
	h.keys("/", "rack", "enter")
	var names []string
	h.inspect(func(m *Model) {
		for _, i := range m.visible {
			names = append(names, m.all[i].Name)
		}
	})
	if len(names) != 1 || names[0] != "farsess" {
		t.Fatalf("filter rack shows %v", names)
	}
}

// TestUnreachableHost: a host that stops answering keeps its sessions
// listed, marked unreachable with the reason (made safe to print),
// refuses actions on them, and comes back by itself.
func TestUnreachableHost(t *testing.T) {
	local, far := sampleBackend(), farBackend()
	hosts, _, fr := twoHosts(local, far)
	h := startHosts(t, hosts, 140, 30)
	h.settleHosts()

	far.mu.Lock()
	far.eventsErr = errors.New("ssh: connect to host far port 22: \x1b]0;pwned\x07Connection refused")
	far.listErr = far.eventsErr
	close(far.events)
	far.mu.Unlock()
	h.waitUntil("far unreachable", func(m *Model) bool { return strings.Contains(m.render(), "unreachable: ssh: connect") })
	var raw string
	h.inspect(func(m *Model) { raw = m.render() })
	if strings.Contains(raw, "\x1b]0;pwned") {
		t.Fatal("the far side's bytes reached the terminal raw")
	}
	scr := h.screen()
	if l := rowLine(scr, "farsess"); !strings.Contains(l, "unreachable") {
		t.Fatalf("farsess not marked unreachable: %q\n%s", l, scr)
	}
	if !strings.Contains(scr, "1 of 2 hosts unreachable") {
		t.Errorf("title does not say so:\n%s", scr)
	}
	if l := rowLine(scr, "api"); strings.Contains(l, "unreachable") {
		t.Errorf("a local row is marked too: %q", l)
	}

	h.selectName("farsess")
	h.keys("enter", "x")
	h.inspect(func(m *Model) {
		if !strings.Contains(m.status, "host far is unreachable") || m.dialog != nil {
			t.Errorf("status %q, dialog %T", m.status, m.dialog)
		}
	})
	fr.mu.Lock()
	attached := len(fr.calls)
	fr.mu.Unlock()
	if attached != 0 || far.count("Stop") != 0 {
		t.Errorf("acted on an unreachable host: attach %d, stop %d", attached, far.count("Stop"))
	}

	far.mu.Lock()
	far.eventsErr, far.listErr = nil, nil
	far.events = make(chan sessions.Event, 64)
	far.mu.Unlock()
	h.waitUntil("far back", func(m *Model) bool {
		s, _ := m.current()
		return s.Name == "farsess" && s.down == "" && !strings.Contains(m.titleBar(m.width), "unreachable")
	})
}

// TestUnreachableFromTheStart: a host never listed shows as one
// placeholder row with the reason.
func TestUnreachableFromTheStart(t *testing.T) {
	far := farBackend()
	far.listErr = errdefs.Errorf(errdefs.ErrUnavailable, "context far: ssh exited with status 255")
	far.eventsErr = far.listErr
	hosts, _, _ := twoHosts(sampleBackend(), far)
	h := startHosts(t, hosts, 140, 30)
	h.waitUntil("placeholder", func(m *Model) bool { return strings.Contains(m.render(), "unreachable: context far: ssh exited") })
	if l := rowLine(h.screen(), "far"); !strings.HasPrefix(strings.TrimSpace(l), "-") {
		t.Errorf("placeholder row %q", l)
	}
	h.waitUntil("local rows", func(m *Model) bool { return rowLine(m.render(), "api") != "" })
}

// TestStalledHostDoesNotStallOthers: a host whose list never answers
// holds up neither the other hosts' rows nor the keys.
func TestStalledHostDoesNotStallOthers(t *testing.T) {
	local, far := sampleBackend(), farBackend()
	far.listGate = make(chan struct{})
	hosts, lr, _ := twoHosts(local, far)
	h := startHosts(t, hosts, 140, 30)
	h.waitUntil("local rows while far is stalled", func(m *Model) bool {
		return m.hosts[0].loaded && m.hosts[1].listing && m.loaded && rowLine(plainScreen(m.render()), "api") != ""
	})
	if !strings.Contains(h.screen(), "connecting…") {
		t.Errorf("no placeholder for the stalled host:\n%s", h.screen())
	}
	// Its placeholder row offers nothing to act on.
	h.keys("G", "d", "x", "enter")
	h.inspect(func(m *Model) {
		if s, _ := m.current(); !s.placeholder() || m.dialog != nil || !strings.Contains(m.status, "not been listed yet") {
			t.Errorf("on the placeholder: row %+v, dialog %T, status %q", s, m.dialog, m.status)
		}
	})
	h.keys("g")
	h.keys("enter")
	h.waitUntil("attached to a local session", func(*Model) bool {
		lr.mu.Lock()
		defer lr.mu.Unlock()
		return len(lr.calls) == 1
	})
	close(far.listGate)
	h.waitUntil("far rows", func(m *Model) bool { return rowLine(plainScreen(m.render()), "farsess") != "" })
}

// TestStalledScreenDoesNotStallOthers: a host whose screen request
// hangs leaves the preview of another host's session free to show.
func TestStalledScreenDoesNotStallOthers(t *testing.T) {
	local, far := sampleBackend(), farBackend()
	hosts, _, _ := twoHosts(local, far)
	h := startHosts(t, hosts, 140, 30)
	h.settleHosts()
	far.mu.Lock()
	far.screenGate = make(chan struct{})
	far.mu.Unlock()
	defer close(far.screenGate)
	h.selectName("farsess")
	h.waitUntil("the far screen asked for", func(m *Model) bool { return len(m.fetching) == 1 })
	h.keys("esc") // the filter off: every row again
	h.selectName("api")
	h.waitUntil("the local preview while the far screen hangs", func(m *Model) bool {
		id, pty := m.previewTarget()
		return m.preview.session == id && m.preview.pty == pty && len(m.preview.lines) > 0
	})
}

// TestActionsGoToTheRowsHost: every action on a row goes to the
// supervisor of that row's host, and only there.
func TestActionsGoToTheRowsHost(t *testing.T) {
	tests := []struct {
		name  string
		keys  []string
		check func(t *testing.T, h *harness, local, far *fakeBackend, lr, fr *attachRecorder)
	}{
		{"enter attaches", []string{"enter"}, func(t *testing.T, h *harness, local, far *fakeBackend, lr, fr *attachRecorder) {
			h.waitUntil("attached", func(*Model) bool { fr.mu.Lock(); defer fr.mu.Unlock(); return len(fr.calls) == 1 })
			if fr.calls[0] != "fa12fa12fa12/1" || len(lr.calls) != 0 {
				t.Errorf("far attached %v, local %v", fr.calls, lr.calls)
			}
		}},
		{"x stops", []string{"x", "y"}, func(t *testing.T, h *harness, local, far *fakeBackend, lr, fr *attachRecorder) {
			h.waitUntil("stopped", func(*Model) bool { return far.count("Stop") == 1 })
			if local.count("Stop") != 0 {
				t.Error("stop went to the local host too")
			}
		}},
		{"c opens a terminal", []string{"c"}, func(t *testing.T, h *harness, local, far *fakeBackend, lr, fr *attachRecorder) {
			h.waitUntil("opened", func(*Model) bool { return far.count("OpenPTY") == 1 })
			if local.count("OpenPTY") != 0 {
				t.Error("open went to the local host too")
			}
		}},
		{"p reads the far policy", []string{"p"}, func(t *testing.T, h *harness, local, far *fakeBackend, lr, fr *attachRecorder) {
			h.waitUntil("policy read", func(*Model) bool { return far.count("Policy") == 1 })
			if local.count("Policy") != 0 {
				t.Error("policy read from the local host")
			}
		}},
		{"s snapshots", []string{"s", "enter"}, func(t *testing.T, h *harness, local, far *fakeBackend, lr, fr *attachRecorder) {
			h.waitUntil("snapshot", func(*Model) bool { return far.count("Snapshot") == 1 })
			if local.count("Snapshot") != 0 {
				t.Error("snapshot went to the local host")
			}
		}},
		{"r lists the far snapshots", []string{"r"}, func(t *testing.T, h *harness, local, far *fakeBackend, lr, fr *attachRecorder) {
			h.waitUntil("listed", func(*Model) bool { return far.count("Snapshots") == 1 })
			if local.count("Snapshots") != 0 {
				t.Error("listed the local host's")
			}
		}},
		{"preview reads the far screen", nil, func(t *testing.T, h *harness, local, far *fakeBackend, lr, fr *attachRecorder) {
			h.waitUntil("far screen shown", func(m *Model) bool { return strings.Contains(m.render(), "uname -n") })
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			local, far := sampleBackend(), farBackend()
			hosts, lr, fr := twoHosts(local, far)
			h := startHosts(t, hosts, 140, 30)
			h.settleHosts()
			h.selectName("farsess")
			h.keys(tt.keys...)
			tt.check(t, h, local, far, lr, fr)
		})
	}
}

// TestFormHost: the new-session form proposes the selected context and
// creates where its Host field says; a host that does not exist is the
// field's error.
func TestFormHost(t *testing.T) {
	tests := []struct {
		name     string
		proposed string // Options.Host
		typed    []string
		want     string // the host that creates; "" none
	}{
		{"proposed default", "", nil, "default"},
		{"proposed far", "far", nil, "far"},
		{"typed far", "", []string{"ctrl+u", "far"}, "far"},
		{"unknown host", "", []string{"ctrl+u", "nowhere"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			local, far := sampleBackend(), farBackend()
			hosts, _, _ := twoHosts(local, far)
			h := startHosts(t, hosts, 140, 40, func(o *Options) { o.Host = tt.proposed })
			h.settleHosts()
			h.keys("n", "shift+tab") // the host field is last
			h.inspect(func(m *Model) {
				f := m.dialog.(*sessionForm)
				if f.focus != fieldHost {
					t.Fatalf("focus %d", f.focus)
				}
				if want := orDefault(tt.proposed, "default"); f.inputs[fieldHost].Value() != want {
					t.Errorf("proposed %q, want %q", f.inputs[fieldHost].Value(), want)
				}
			})
			h.keys(tt.typed...)
			h.keys("enter")
			if tt.want == "" {
				h.inspect(func(m *Model) {
					f, ok := m.dialog.(*sessionForm)
					if !ok || f.err == nil || f.err.field != fieldHost || !strings.Contains(f.err.Error(), "default, far") {
						t.Errorf("dialog %T err %v", m.dialog, f.err)
					}
				})
				if local.count("Create")+far.count("Create") != 0 {
					t.Error("created somewhere")
				}
				return
			}
			creator, other := local, far
			if tt.want == "far" {
				creator, other = far, local
			}
			h.waitUntil("created", func(*Model) bool { return creator.count("Create") == 1 })
			if other.count("Create") != 0 {
				t.Error("created on both")
			}
			h.waitUntil("new session selected on its host", func(m *Model) bool {
				s, _ := m.current()
				return s.ID == "c0ffee000001" && s.host.Name == tt.want
			})
		})
	}
}

// TestFormHostHiddenWithOneHost: with one host the form has no Host
// field and tab never reaches it.
func TestFormHostHiddenWithOneHost(t *testing.T) {
	h := start(t, sampleBackend(), 100, 40)
	h.keys("n", "shift+tab")
	h.inspect(func(m *Model) {
		f := m.dialog.(*sessionForm)
		if f.focus != fieldSecrets {
			t.Errorf("focus %d", f.focus)
		}
	})
	if strings.Contains(h.screen(), "Host ") {
		t.Errorf("Host field shown:\n%s", h.screen())
	}
}

// TestErrorLinesAreText: an error shown on the status line or in the
// preview may quote another machine or a guest; it never carries an
// escape sequence to the terminal.
func TestErrorLinesAreText(t *testing.T) {
	got := oneLine("stop failed:\n\x1b]52;c;cHduZWQ=\x07 \x1b[2J done")
	if strings.ContainsRune(got, 0x1b) || strings.ContainsRune(got, 0x07) || strings.Contains(got, "\n") {
		t.Errorf("oneLine kept control characters: %q", got)
	}
}
