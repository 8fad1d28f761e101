package ui

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/charmbracelet/x/ansi"
	"github.com/gondolin/gondolin/sessions"
	"github.com/gondolin/gondolin/vm"
)

func TestFilter(t *testing.T) {
	s := sessions.Session{ID: "a1b2c3d4e5f6", Name: "api", State: sessions.Stale, Image: "debian:12", Label: "API work", Reason: "the VM is not running"}
	tests := []struct {
		q    string
		want bool
	}{
		{"", true},
		{"api", true},
		{"API", true},
		{"a1b2", true},
		{"debian", true},
		{"stale", true},
		{"live", false},
		{"not running", true},
		{"api debian", true},
		{"api ubuntu", false},
		{"work", true},
		{"zzz", false},
	}
	for _, tt := range tests {
		if got := matches(row{Session: s}, tt.q); got != tt.want {
			t.Errorf("matches(%q) = %v, want %v", tt.q, got, tt.want)
		}
	}
}

func TestBuildRequest(t *testing.T) {
	env := map[string]string{"GH_TOKEN": "ghp_secret"}
	getenv := func(k string) string { return env[k] }
	src, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	data, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	form := func(kv ...any) formValues {
		var v formValues
		v[fieldImage] = "default:latest"
		for i := 0; i < len(kv); i += 2 {
			v[kv[i].(int)] = kv[i+1].(string)
		}
		return v
	}
	tests := []struct {
		name      string
		v         formValues
		wantField int // -1: valid
		wantErr   string
		check     func(t *testing.T, req sessions.CreateRequest)
	}{
		{name: "defaults", v: form(), wantField: -1, check: func(t *testing.T, r sessions.CreateRequest) {
			if r.Spec.Image != "default:latest" || r.Spec.CPUs != 0 || r.Spec.MemoryMiB != 0 || r.Spec.Policy != nil {
				t.Errorf("spec %+v", r.Spec)
			}
		}},
		{name: "everything", v: form(fieldName, "web-1", fieldCPUs, "2", fieldMemory, "1G", fieldHosts, "api.github.com, *.npmjs.org", fieldSecrets, "GH_TOKEN@api.github.com"),
			wantField: -1, check: func(t *testing.T, r sessions.CreateRequest) {
				s := r.Spec
				if s.Name != "web-1" || s.CPUs != 2 || s.MemoryMiB != 1024 {
					t.Errorf("spec %+v", s)
				}
				if s.Policy == nil || len(s.Policy.Allow) != 2 || len(s.Policy.Secrets) != 1 {
					t.Fatalf("policy %+v", s.Policy)
				}
				if r.SecretValues["GH_TOKEN"] != "ghp_secret" {
					t.Errorf("secret values %v", r.SecretValues)
				}
			}},
		{name: "bad name", v: form(fieldName, "-x"), wantField: fieldName, wantErr: "--name"},
		{name: "image with space", v: form(fieldImage, "a b"), wantField: fieldImage, wantErr: "no spaces"},
		{name: "cpus not a number", v: form(fieldCPUs, "two"), wantField: fieldCPUs, wantErr: "whole number"},
		{name: "cpus zero", v: form(fieldCPUs, "0"), wantField: fieldCPUs},
		{name: "cpus too many", v: form(fieldCPUs, "65"), wantField: fieldCPUs, wantErr: "--cpus"},
		{name: "memory too small", v: form(fieldMemory, "12"), wantField: fieldMemory, wantErr: "64M"},
		{name: "memory garbage", v: form(fieldMemory, "lots"), wantField: fieldMemory},
		{name: "host with scheme", v: form(fieldHosts, "https://x.com"), wantField: fieldHosts},
		{name: "secret without host", v: form(fieldSecrets, "GH_TOKEN"), wantField: fieldSecrets},
		{name: "secret inline value refused", v: form(fieldSecrets, "GH_TOKEN@x.com=v"), wantField: fieldSecrets, wantErr: "no =VALUE"},
		{name: "secret not in env", v: form(fieldSecrets, "NOPE@x.com"), wantField: fieldSecrets, wantErr: "NOPE"},
		{name: "mount syntax", v: form(fieldMounts, "/src"), wantField: fieldMounts, wantErr: "HOST:GUEST"},
		{name: "mount relative guest", v: form(fieldMounts, "/src:work"), wantField: fieldMounts, wantErr: "absolute"},
		{name: "mount bad mode", v: form(fieldMounts, "/src:/work:rx"), wantField: fieldMounts, wantErr: "ro or rw"},
		{name: "mount host missing", v: form(fieldMounts, src+"/nope:/work:ro"), wantField: fieldMounts, wantErr: "does not exist"},
		{name: "mounts", v: form(fieldMounts, src+":/work:ro "+data+":/data"), wantField: -1,
			check: func(t *testing.T, r sessions.CreateRequest) {
				m := r.Spec.Mounts
				if len(m) != 2 || m[0].HostPath != src || m[0].GuestPath != "/work" || !m[0].ReadOnly || m[1].HostPath != data || m[1].GuestPath != "/data" || m[1].ReadOnly {
					t.Errorf("mounts %+v", m)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := buildRequest(tt.v, false, getenv)
			if tt.wantField < 0 {
				if err != nil {
					t.Fatal(err)
				}
				if tt.check != nil {
					tt.check(t, req)
				}
				return
			}
			var fe *fieldError
			if !errors.As(err, &fe) {
				t.Fatalf("err %v, want a field error", err)
			}
			if fe.field != tt.wantField || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("field %s: %v; want field %s mentioning %q", fieldLabels[fe.field], err, fieldLabels[tt.wantField], tt.wantErr)
			}
			if strings.Contains(err.Error(), "ghp_secret") {
				t.Error("the error shows a secret value")
			}
		})
	}
}

// attachRecorder is an AttachFunc that records its calls.
type attachRecorder struct {
	mu    sync.Mutex
	calls []string
}

func (a *attachRecorder) attach(ctx context.Context, ref string, pty uint64, in, out *os.File) (sessions.AttachResult, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls = append(a.calls, ref+"/"+string(rune('0'+pty)))
	return sessions.AttachResult{Detached: true}, nil
}

func TestKeys(t *testing.T) {
	type check func(t *testing.T, h *harness, f *fakeBackend)
	selected := func(name string) check {
		return func(t *testing.T, h *harness, f *fakeBackend) {
			h.inspect(func(m *Model) {
				if s, _ := m.current(); s.Name != name {
					t.Errorf("selected %q, want %q", s.Name, name)
				}
			})
		}
	}
	previewing := func(pty uint64) check {
		return func(t *testing.T, h *harness, f *fakeBackend) {
			h.inspect(func(m *Model) {
				if _, p := m.previewTarget(); p != pty {
					t.Errorf("previewing terminal %d, want %d", p, pty)
				}
			})
		}
	}
	status := func(want string) check {
		return func(t *testing.T, h *harness, f *fakeBackend) {
			h.inspect(func(m *Model) {
				if !strings.Contains(m.status, want) {
					t.Errorf("status %q, want it to mention %q", m.status, want)
				}
			})
		}
	}
	calls := func(name string, n int) check {
		return func(t *testing.T, h *harness, f *fakeBackend) {
			h.waitUntil(name+" called", func(*Model) bool { return f.count(name) >= n })
			if got := f.count(name); got != n {
				t.Errorf("%s called %d times, want %d", name, got, n)
			}
		}
	}
	noDialog := func(t *testing.T, h *harness, f *fakeBackend) {
		h.inspect(func(m *Model) {
			if m.dialog != nil {
				t.Errorf("dialog %T open", m.dialog)
			}
		})
	}
	state := func(name string, want sessions.State) check {
		return func(t *testing.T, h *harness, f *fakeBackend) {
			h.waitUntil(name+" is "+string(want), func(m *Model) bool {
				for _, s := range m.all {
					if s.Name == name {
						return s.State == want
					}
				}
				return false
			})
		}
	}
	tests := []struct {
		name   string
		keys   []string
		checks []check
	}{
		{"starts on the newest live session", nil, []check{selected("api"), previewing(2)}},
		{"j moves down", []string{"j"}, []check{selected("build"), previewing(1)}},
		{"down arrow moves down", []string{"down"}, []check{selected("build")}},
		{"k at the top stays", []string{"k"}, []check{selected("api")}},
		{"j stops at the bottom", []string{"j", "j", "j", "j", "j", "j"}, []check{selected("")}},
		{"G and g", []string{"G"}, []check{selected("")}},
		{"g goes to the top", []string{"G", "g"}, []check{selected("api")}},
		{"tab cycles terminals", []string{"tab"}, []check{previewing(1)}},
		{"tab wraps around", []string{"tab", "tab"}, []check{previewing(2)}},
		{"1 picks terminal 1", []string{"1"}, []check{previewing(1)}},
		{"9 beyond the terminals", []string{"9"}, []check{previewing(2), status("has 2 terminal")}},
		{"enter attaches to the previewed terminal", []string{"1", "enter"}, []check{func(t *testing.T, h *harness, f *fakeBackend) {}}},
		{"enter on a stale session", []string{"j", "j", "enter"}, []check{status("it is stale")}},
		{"c opens a shell", []string{"c"}, []check{calls("OpenPTY", 1), func(t *testing.T, h *harness, f *fakeBackend) {
			h.waitUntil("new terminal previewed", func(m *Model) bool { _, p := m.previewTarget(); return p == 3 })
		}}},
		{"c on a stopped session", []string{"G", "c"}, []check{status("stopped"), calls("OpenPTY", 0)}},
		{"x then y stops", []string{"x", "y"}, []check{calls("Stop", 1), state("api", sessions.Stopped)}},
		{"x then n does not", []string{"x", "n"}, []check{noDialog, calls("Stop", 0)}},
		{"x then esc does not", []string{"x", "esc"}, []check{noDialog, calls("Stop", 0)}},
		{"x on a stale session", []string{"j", "j", "x"}, []check{noDialog, status("it is stale")}},
		{"d on a live session refuses", []string{"d"}, []check{noDialog, status("stop it first")}},
		{"d then y removes a stopped one", []string{"G", "d", "y"}, []check{calls("Remove", 1)}},
		{"/ filters and esc clears", []string{"/", "build", "enter"}, []check{selected("build"), func(t *testing.T, h *harness, f *fakeBackend) {
			h.inspect(func(m *Model) {
				if len(m.visible) != 1 {
					t.Errorf("%d visible", len(m.visible))
				}
			})
			h.keys("esc")
			h.inspect(func(m *Model) {
				if len(m.visible) != 4 {
					t.Errorf("%d visible after esc", len(m.visible))
				}
			})
		}}},
		{"q inside the filter is text", []string{"/", "q"}, []check{func(t *testing.T, h *harness, f *fakeBackend) {
			h.inspect(func(m *Model) {
				if m.quitting || m.filter.Value() != "q" {
					t.Errorf("quitting %v, filter %q", m.quitting, m.filter.Value())
				}
			})
		}}},
		{"? opens help, any key closes", []string{"?", "j"}, []check{noDialog, selected("api")}},
		{"n creates a session", []string{"n", "tab", "web", "tab", "2", "enter"}, []check{calls("Create", 1), func(t *testing.T, h *harness, f *fakeBackend) {
			h.waitUntil("new session selected", func(m *Model) bool { s, _ := m.current(); return s.Name == "web" })
			if r := f.created[0]; r.Spec.Name != "web" || r.Spec.CPUs != 2 || r.Rows == 0 || r.Cols == 0 {
				t.Errorf("create request %+v", r)
			}
		}}},
		{"an invalid form is not sent", []string{"n", "tab", "tab", "tab", "1", "enter"}, []check{calls("Create", 0), func(t *testing.T, h *harness, f *fakeBackend) {
			h.inspect(func(m *Model) {
				form, ok := m.dialog.(*sessionForm)
				if !ok || form.err == nil || form.focus != fieldMemory {
					t.Errorf("form not showing the memory error: %#v", m.dialog)
				}
			})
		}}},
		{"p adds an allowed host", []string{"p"}, []check{func(t *testing.T, h *harness, f *fakeBackend) {
			h.waitUntil("policy loaded", policyReady)
			h.keys("a", "*.example.com", "enter")
			h.waitUntil("host added", func(m *Model) bool {
				d, ok := m.dialog.(*policyEditor)
				return ok && len(d.pv.Policy.Allow) == 4
			})
			if ch := f.changes[0]; ch.Allow != "*.example.com" {
				t.Errorf("change %+v", ch)
			}
		}}},
		{"p rotates a secret with a masked value, keeping its options", []string{"p"}, []check{func(t *testing.T, h *harness, f *fakeBackend) {
			h.waitUntil("policy loaded", policyReady)
			h.keys("tab", "j", "r", "s3cret", "enter")
			h.waitUntil("secret set", func(*Model) bool { return f.count("ChangePolicy") == 1 })
			ch := f.changes[0]
			if ch.SetSecret != "NPM_TOKEN:url@registry.npmjs.org" || ch.SecretValue == nil || *ch.SecretValue != "s3cret" {
				t.Errorf("change %+v", ch)
			}
			if strings.Contains(h.screen(), "s3cret") {
				t.Error("the value shows on screen")
			}
		}}},
		{"p removes a secret after y", []string{"p"}, []check{func(t *testing.T, h *harness, f *fakeBackend) {
			h.waitUntil("policy loaded", policyReady)
			h.keys("tab", "d")
			if f.count("ChangePolicy") != 0 {
				t.Fatal("removed without asking")
			}
			h.keys("y")
			h.waitUntil("secret removed", func(*Model) bool { return f.count("ChangePolicy") == 1 })
			if f.changes[0].RemoveSecret != "GH_TOKEN" {
				t.Errorf("change %+v", f.changes[0])
			}
		}}},
		{"r resumes the chosen snapshot", []string{"r"}, []check{func(t *testing.T, h *harness, f *fakeBackend) {
			h.waitUntil("list loaded", func(m *Model) bool { d, ok := m.dialog.(*resumeDialog); return ok && d.loaded })
			h.keys("enter")
		}, calls("Create", 1), func(t *testing.T, h *harness, f *fakeBackend) {
			h.waitUntil("resumed session selected", func(m *Model) bool { s, _ := m.current(); return s.Name == "resumed" })
			if r := f.created[0]; r.Resume != "snapaaaa0001" {
				t.Errorf("create request %+v", r)
			}
		}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := sampleBackend()
			rec := &attachRecorder{}
			h := start(t, f, 100, 30, func(o *Options) { o.Attach = rec.attach })
			h.keys(tt.keys...)
			for _, c := range tt.checks {
				c(t, h, f)
			}
			if tt.name == "enter attaches to the previewed terminal" {
				h.waitUntil("attached", func(*Model) bool {
					rec.mu.Lock()
					defer rec.mu.Unlock()
					return len(rec.calls) == 1
				})
				if rec.calls[0] != "a1b2c3d4e5f6/1" {
					t.Errorf("attached to %v", rec.calls)
				}
				h.waitUntil("detach reported", func(m *Model) bool { return strings.Contains(m.status, "detached") })
			}
		})
	}
}

// TestQuitLeavesVMs: q ends the program without stopping or removing
// anything.
func TestQuitLeavesVMs(t *testing.T) {
	f := sampleBackend()
	h := start(t, f, 80, 24)
	h.tm.Type("q") // not h.keys: a quit program answers nothing
	h.tm.WaitFinished(t, teatestTimeout)
	if f.count("Stop")+f.count("Remove") != 0 {
		t.Fatalf("quitting called Stop %d and Remove %d times", f.count("Stop"), f.count("Remove"))
	}
}

// TestEventDriven: the preview follows pty.output for the previewed
// terminal only, and session events re-list; nothing polls.
func TestEventDriven(t *testing.T) {
	f := sampleBackend()
	h := start(t, f, 80, 24)
	h.waitUntil("subscribed", func(m *Model) bool { return m.eventsUp })
	h.settle()
	lists, screens := f.count("List"), f.count("Screen")

	// Output on a terminal nobody previews: no request.
	f.events <- sessions.Event{Type: sessions.EventPTYPaint, Session: "0f9e8d7c6b5a", PTY: 1}
	f.events <- sessions.Event{Type: sessions.EventPTYPaint, Session: "a1b2c3d4e5f6", PTY: 1}
	time.Sleep(100 * time.Millisecond)
	h.settle()
	if got := f.count("Screen"); got != screens {
		t.Fatalf("Screen called %d times for unwatched output", got-screens)
	}

	// Output on the previewed terminal: the preview is fetched again and
	// shows it.
	f.mu.Lock()
	f.screens["a1b2c3d4e5f6/2"] = screenOf(24, 80, "top - 12:00:05 up 1:35", "fresh output")
	f.mu.Unlock()
	f.events <- sessions.Event{Type: sessions.EventPTYPaint, Session: "a1b2c3d4e5f6", PTY: 2}
	h.waitUntil("preview refreshed", func(m *Model) bool { return strings.Contains(m.render(), "fresh output") })
	if f.count("List") != lists {
		t.Errorf("pty.output re-listed sessions")
	}

	// A burst of session events becomes few lists, not one each.
	f.mu.Lock()
	f.sessions = f.sessions[1:]
	f.mu.Unlock()
	for i := 0; i < 50; i++ {
		f.events <- sessions.Event{Type: sessions.EventState, Session: "a1b2c3d4e5f6"}
	}
	h.waitUntil("list refreshed", func(m *Model) bool { return len(m.all) == 3 })
	h.settle()
	if n := f.count("List") - lists; n < 1 || n > 3 {
		t.Errorf("50 events made %d lists", n)
	}

	// The stream ends (supervisor restart): the dashboard subscribes
	// again and lists afresh.
	events := f.count("Events")
	f.mu.Lock()
	old := f.events
	f.events = make(chan sessions.Event, 64)
	f.mu.Unlock()
	close(old)
	h.waitUntil("resubscribed", func(m *Model) bool { return m.eventsUp && f.count("Events") > events })
}

// TestLayoutFits: every frame has exactly the terminal's height and no
// line wider than it, from 80x24 up, with and without dialogs.
func TestLayoutFits(t *testing.T) {
	f := manySessions(100)
	h := start(t, f, 80, 24)
	for _, size := range [][2]int{{80, 24}, {100, 30}, {120, 40}, {200, 60}, {81, 25}, {60, 15}} {
		for _, keys := range [][]string{nil, {"?"}, {"n"}, {"x"}, {"p"}} {
			h.tm.Send(sizeMsg(size[0], size[1]))
			h.keys(keys...)
			h.settle()
			var frame string
			h.inspect(func(m *Model) { frame = m.render() })
			lines := strings.Split(frame, "\n")
			if len(lines) != size[1] {
				t.Errorf("%dx%d %v: %d lines", size[0], size[1], keys, len(lines))
			}
			for i, l := range lines {
				if w := ansi.StringWidth(l); w > size[0] {
					t.Errorf("%dx%d %v: line %d is %d wide: %q", size[0], size[1], keys, i, w, ansi.Strip(l))
				}
			}
			h.keys("esc")
		}
	}
}

func TestTemplateNote(t *testing.T) {
	at := func(min int) time.Time { return time.Date(2026, 12, 2, 12, min, 0, 0, time.UTC) }
	ready := vm.TemplateInfo{Key: "k1", Label: "default:latest", CPUs: 1, State: vm.TemplateReady, Built: at(0)}
	building := vm.TemplateInfo{Key: "k1", Label: "default:latest", CPUs: 1, State: vm.TemplateBuilding}
	broken := vm.TemplateInfo{Key: "k1", Label: "default:latest", CPUs: 1, State: vm.TemplateBroken, Broken: at(10), Reason: "a clone did not restore:\nthe guest crashed"}
	otherBroken := vm.TemplateInfo{Key: "k2", State: vm.TemplateBroken, Broken: at(20), Reason: "qemu exited"}
	// The image was rebuilt since: a new key, same image and shape.
	newImage := vm.TemplateInfo{Key: "k3", Label: "default:latest", CPUs: 1, State: vm.TemplateReady, Built: at(30)}
	oldImage := vm.TemplateInfo{Key: "k3", Label: "default:latest", CPUs: 1, State: vm.TemplateReady, Built: at(5)}
	tests := []struct {
		name string
		list []vm.TemplateInfo
		want string
	}{
		{"none", nil, ""},
		{"ready", []vm.TemplateInfo{ready}, ""},
		{"broken and not rebuilt", []vm.TemplateInfo{broken}, "template default:latest broke (new VMs boot cold until it is rebuilt): a clone did not restore: the guest crashed"},
		{"broken, rebuilt since", []vm.TemplateInfo{ready, broken}, ""},
		{"being rebuilt", []vm.TemplateInfo{building, broken}, "template default:latest: rebuilding"},
		{"built the first time", []vm.TemplateInfo{building}, "template default:latest: building"},
		{"another broken one, without a label", []vm.TemplateInfo{ready, broken, otherBroken}, "template k2 broke (new VMs boot cold until it is rebuilt): qemu exited"},
		{"broken, its image replaced since", []vm.TemplateInfo{newImage, broken}, ""},
		{"broken after another key's template was made", []vm.TemplateInfo{oldImage, broken}, "template default:latest broke (new VMs boot cold until it is rebuilt): a clone did not restore: the guest crashed"},
	}
	for _, tt := range tests {
		if got := templateNote(tt.list); got != tt.want {
			t.Errorf("%s: %q, want %q", tt.name, got, tt.want)
		}
	}
}

// TestTemplateNoteFollowsEvents: the dashboard says when a template broke
// and stops saying it once a template event brings a rebuilt one.
func TestTemplateNoteFollowsEvents(t *testing.T) {
	f := sampleBackend()
	f.templates = []vm.TemplateInfo{{Key: "k1", Label: "default:latest", State: vm.TemplateBroken, Reason: "the guest crashed"}}
	h := start(t, f, 100, 30)
	h.waitUntil("the note", func(m *Model) bool { return strings.Contains(m.render(), "template default:latest broke") })
	f.mu.Lock()
	f.templates = append([]vm.TemplateInfo{{Key: "k1", Label: "default:latest", State: vm.TemplateReady}}, f.templates...)
	f.mu.Unlock()
	f.events <- sessions.Event{Type: sessions.EventTemplate}
	h.waitUntil("the note gone", func(m *Model) bool { return !strings.Contains(m.render(), "template default:latest") })
}

// TestGuestTextNeverReachesTheTerminalRaw: what a guest or a script chose
// (a label, a stale reason quoting the guest, its screen's hyperlinks) is
// escaped or dropped before the dashboard prints it.
func TestGuestTextNeverReachesTheTerminalRaw(t *testing.T) {
	const osc52 = "\x1b]52;c;aGkK\x07"
	f := newFake(sessions.Session{ID: "a1b2c3d4e5f6", Name: "evil", State: sessions.Stale, Created: epoch,
		Image: "default:latest", Label: "label" + osc52, Reason: "agent said " + osc52 + "\u202e",
		PTYs: []sessions.PTY{{ID: 1, Running: true, Main: true, Argv: []string{"sh" + osc52}}}})
	scr := screenOf(24, 80, "prompt")
	scr.ANSI = "\x1b[1mbold\x1b[m \x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\ " + osc52 + "\n" + strings.Repeat("\n", 22)
	f.screens["a1b2c3d4e5f6/1"] = scr
	h := start(t, f, 120, 30)
	h.waitUntil("previewed", func(m *Model) bool { return strings.Contains(m.render(), "link") })
	var frame string
	h.inspect(func(m *Model) { frame = m.render() })
	for _, bad := range []string{"\x1b]52", "\x1b]8;", "\u202e", "\a"} {
		if strings.Contains(frame, bad) {
			t.Errorf("the frame holds %q raw", bad)
		}
	}
	if !strings.Contains(frame, `\x1b]52`) {
		t.Errorf("the escaped label is not shown:\n%s", frame)
	}
}

func TestPoolText(t *testing.T) {
	def := sessions.PoolShape{CPUs: 1, MemoryMiB: 256, Network: true}
	shape := func(ready, warming int, err string) sessions.PoolShape {
		s := def
		s.Ready, s.Warming, s.Error = ready, warming, err
		return s
	}
	// Shapes other than the default one count in memory only.
	other := sessions.PoolShape{Image: "debian:12", CPUs: 1, MemoryMiB: 256, Network: true, Ready: 2, Warming: 1}
	noNet := sessions.PoolShape{CPUs: 1, MemoryMiB: 256, Ready: 1, Warming: 1}
	big := sessions.PoolShape{CPUs: 2, MemoryMiB: 256, Network: true, Ready: 1}
	tests := []struct {
		name   string
		pool   sessions.PoolStatus
		detail int
		want   string
		bad    bool
	}{
		{"off", sessions.PoolStatus{Size: 0, MemoryMiB: 1024}, poolFull, "pool off", false},
		{"on, nothing warmed yet", sessions.PoolStatus{Size: 2}, poolFull, "pool 0/2", false},
		{"full", sessions.PoolStatus{Size: 2, RSSBytes: 620 << 20, Shapes: []sessions.PoolShape{shape(2, 0, "")}}, poolFull, "pool 2/2 · 620M", false},
		{"warming", sessions.PoolStatus{Size: 2, RSSBytes: 310 << 20, Shapes: []sessions.PoolShape{shape(1, 1, "")}}, poolFull, "pool 1/2 +1 warming · 310M", false},
		{"warming, no room for memory", sessions.PoolStatus{Size: 2, RSSBytes: 310 << 20, Shapes: []sessions.PoolShape{shape(1, 1, "")}}, poolCount, "pool 1/2 +1 warming", false},
		{"warming, brief", sessions.PoolStatus{Size: 2, RSSBytes: 310 << 20, Shapes: []sessions.PoolShape{shape(1, 1, "")}}, poolBrief, "pool 1/2", false},
		{"memory above a GiB", sessions.PoolStatus{Size: 4, RSSBytes: 1536 << 20, Shapes: []sessions.PoolShape{shape(4, 0, "")}}, poolFull, "pool 4/4 · 1.5G", false},
		{"failing", sessions.PoolStatus{Size: 2, Shapes: []sessions.PoolShape{shape(0, 0, "restore: qemu exited")}}, poolFull, "pool 0/2 failing", true},
		{"failed once, one ready since", sessions.PoolStatus{Size: 2, RSSBytes: 310 << 20, Shapes: []sessions.PoolShape{shape(1, 1, "restore: qemu exited")}}, poolFull, "pool 1/2 +1 warming · 310M", false},
		{"other shapes only count in memory", sessions.PoolStatus{Size: 2, RSSBytes: 900 << 20, Shapes: []sessions.PoolShape{other, noNet, big, shape(1, 0, "")}}, poolFull, "pool 1/2 · 900M", false},
		{"the default shape not resolved yet", sessions.PoolStatus{Size: 2, RSSBytes: 620 << 20, Shapes: []sessions.PoolShape{other}}, poolFull, "pool 0/2 · 620M", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, bad := poolText(tt.pool, tt.detail)
			if got != tt.want || bad != tt.bad {
				t.Errorf("poolText = %q, %v; want %q, %v", got, bad, tt.want, tt.bad)
			}
		})
	}
}

// TestTitlePoolIndicator: the title bar shows as much of the pool
// indicator as fits beside the session counts, never wider than the
// terminal, and none when the supervisor reports no status.
func TestTitlePoolIndicator(t *testing.T) {
	warming := sessions.PoolStatus{Size: 2, RSSBytes: 310 << 20,
		Shapes: []sessions.PoolShape{{CPUs: 1, MemoryMiB: 256, Network: true, Ready: 1, Warming: 1, RSSBytes: 310 << 20}}}
	tests := []struct {
		name    string
		pool    *sessions.PoolStatus // nil: the fake's steady pool
		basic   bool                 // a backend without Status
		keys    []string
		w       int
		want    string // the title, plain, trailing spaces trimmed
		without string // a text the title must not hold
	}{
		{name: "steady at 80", w: 80, want: "gondolin  4 sessions, 2 live                       pool 2/2 · 620M  events: live"},
		{name: "warming at 80", pool: &warming, w: 80, want: "gondolin  4 sessions, 2 live            pool 1/2 +1 warming · 310M  events: live"},
		{name: "warming at 64", pool: &warming, w: 64, want: "gondolin  4 sessions, 2 live   pool 1/2 +1 warming  events: live"},
		{name: "warming at 60", pool: &warming, w: 60, want: "gondolin  4 sessions, 2 live          pool 1/2  events: live"},
		{name: "warming at 50", pool: &warming, w: 50, want: "gondolin  4 sessions, 2 live          events: live", without: "pool"},
		{name: "off", pool: &sessions.PoolStatus{Size: 0, MemoryMiB: 1024}, w: 80, want: "gondolin  4 sessions, 2 live                              pool off  events: live"},
		{name: "filtered at 80", keys: []string{"/", "default", "enter"}, w: 80, want: `gondolin  4 sessions, 2 live  filter "default": 3 shown   pool 2/2  events: live`},
		{name: "filtered at 60", keys: []string{"/", "default", "enter"}, w: 60, want: `gondolin  4 sessions, 2 live  filter "default"… events: live`, without: "pool"},
		{name: "no status", basic: true, w: 80, want: "gondolin  4 sessions, 2 live                                        events: live", without: "pool"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := sampleBackend()
			if tt.pool != nil {
				f.pool = *tt.pool
			}
			var b Backend = f
			if tt.basic {
				b = basicBackend{f}
			}
			h := start(t, b, tt.w, 24)
			h.waitUntil("events up", func(m *Model) bool { return m.eventsUp })
			h.keys(tt.keys...)
			h.settle()
			var title string
			h.inspect(func(m *Model) { title = m.titleBar(tt.w) })
			if w := ansi.StringWidth(title); w > tt.w {
				t.Errorf("the title is %d wide at %d", w, tt.w)
			}
			got := strings.TrimRight(ansi.Strip(title), " ")
			if got != tt.want {
				t.Errorf("title:\n%q\nwant:\n%q", got, tt.want)
			}
			if tt.without != "" && strings.Contains(got, tt.without) {
				t.Errorf("the title holds %q: %q", tt.without, got)
			}
		})
	}
}

// TestPoolFollowsTheSupervisor: the pool indicator follows the pool
// after a session event (its list is followed by a read of the status)
// and, when nothing sends an event (a one-shot exec claimed a VM), within
// statusEvery ticks.
func TestPoolFollowsTheSupervisor(t *testing.T) {
	f := sampleBackend()
	h := start(t, f, 100, 30)
	h.waitUntil("the pool shown", func(m *Model) bool { return strings.Contains(m.titleBar(100), "pool 2/2 · 620M") })
	setPool := func(ready, warming int, rss int64) {
		f.mu.Lock()
		f.pool.RSSBytes = rss
		f.pool.Shapes[0].Ready, f.pool.Shapes[0].Warming, f.pool.Shapes[0].RSSBytes = ready, warming, rss
		f.mu.Unlock()
	}

	// A session created from the pool: its event brings the pool's news.
	setPool(1, 1, 310<<20)
	f.events <- sessions.Event{Type: sessions.EventCreated, Session: "a1b2c3d4e5f6"}
	h.waitUntil("the claim shown", func(m *Model) bool { return strings.Contains(m.titleBar(100), "pool 1/2 +1 warming · 310M") })

	// The pool warms its VM again: no event says so; the next read does.
	setPool(2, 0, 620<<20)
	reads := f.count("Status")
	h.inspect(func(m *Model) { m.statusTicks = statusEvery - 1 })
	h.waitUntil("the refill shown", func(m *Model) bool { return strings.Contains(m.titleBar(100), "pool 2/2 · 620M") })
	if n := f.count("Status") - reads; n != 1 {
		t.Errorf("%d reads of the status for one refill, want 1", n)
	}
}

// TestCreatingShown: from Enter on, a create or a resume shows its new
// session as creating, with the step the supervisor reports, selected;
// success turns the row live, failure takes it away and says why; and
// nothing but waiting is offered on a row being made.
func TestCreatingShown(t *testing.T) {
	const id = "c0ffee000001" // the fake's first create
	tests := []struct {
		name string
		// keys start the create (waitResume: after r's list is in).
		keys   []string
		resume bool
		phases []string // the steps the supervisor reports, first one included
		fail   error
		// wantName is the row's name; wantStatus what the status line
		// says at the end.
		wantName   string
		wantStatus string
		wantForm   bool // the form comes back (a failed create from it)
	}{
		{name: "form, made", keys: []string{"n", "tab", "web", "enter"}, wantName: "web",
			phases:     []string{sessions.PhaseStarting, sessions.PhaseTemplate, sessions.PhaseClone, sessions.PhaseTerminal},
			wantStatus: "created web"},
		{name: "form, fails", keys: []string{"n", "tab", "web", "enter"}, wantName: "web",
			phases: []string{sessions.PhaseStarting, sessions.PhaseBooting}, fail: errors.New("boot: the guest agent did not answer"),
			wantStatus: "create: boot: the guest agent did not answer", wantForm: true},
		{name: "resume, made", keys: []string{"r"}, resume: true, wantName: "resumed",
			phases:     []string{sessions.PhaseCheckSnapshot, sessions.PhaseRestore},
			wantStatus: "created resumed"},
		{name: "resume, fails", keys: []string{"r"}, resume: true, wantName: "resumed",
			phases: []string{sessions.PhaseCheckSnapshot, sessions.PhaseRestore}, fail: errors.New("restore: bad state file"),
			wantStatus: "create: restore: bad state file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := sampleBackend()
			f.createGate = make(chan struct{})
			f.createErr = tt.fail
			h := start(t, f, 100, 30)
			h.waitUntil("subscribed", func(m *Model) bool { return m.eventsUp })
			h.keys(tt.keys...)
			if tt.resume {
				h.waitUntil("snapshots listed", func(m *Model) bool {
					d, ok := m.dialog.(*resumeDialog)
					return ok && d.loaded
				})
				h.keys("enter")
			}
			for i, phase := range tt.phases {
				if i > 0 {
					f.setPhase(id, phase)
				}
				want := "creating: " + phase + "…"
				h.waitUntil("the row creating, "+phase, func(m *Model) bool {
					s, ok := m.current()
					return ok && s.ID == id && strings.Contains(m.render(), want)
				})
				scr := h.screen()
				row := regexp.MustCompile(`(?m)^> ` + tt.wantName + `\s+c0ffee\S*\s+creating: ` + regexp.QuoteMeta(phase))
				if !row.MatchString(scr) || !strings.Contains(scr, "  creating: "+phase+"… it turns live once its VM is up") {
					t.Fatalf("step %q: no selected creating row with it and its preview:\n%s", phase, scr)
				}
			}
			// Nothing but waiting on a row being made.
			for _, k := range []string{"enter", "x", "d", "c", "s"} {
				h.keys(k)
				h.inspect(func(m *Model) {
					if m.dialog != nil || m.statusErr || !strings.Contains(m.status, "being created") {
						t.Errorf("%s on a creating row: dialog %T, status %q", k, m.dialog, m.status)
					}
				})
			}
			if f.count("Stop")+f.count("Remove")+f.count("OpenPTY")+f.count("Snapshot") != 0 {
				t.Fatal("an action reached the supervisor for a session being made")
			}

			close(f.createGate)
			h.waitUntil("the create reported", func(m *Model) bool { return m.creates == 0 && strings.Contains(m.status, tt.wantStatus) })
			if tt.fail == nil {
				h.waitUntil("the row live", func(m *Model) bool {
					s, ok := m.current()
					return ok && s.ID == id && s.State == sessions.Live
				})
			} else {
				h.waitUntil("the row gone", func(m *Model) bool {
					for _, s := range m.all {
						if s.ID == id {
							return false
						}
					}
					return true
				})
				h.inspect(func(m *Model) {
					if !m.statusErr {
						t.Errorf("the failure is not shown as an error: %q", m.status)
					}
					if _, ok := m.dialog.(*sessionForm); ok != tt.wantForm {
						t.Errorf("dialog %T; want the form back: %v", m.dialog, tt.wantForm)
					}
				})
			}
			if scr := h.screen(); strings.Contains(scr, "creating") {
				t.Errorf("still creating:\n%s", scr)
			}
		})
	}
}

// TestSnapshottingShown: while a snapshot is taken, the session's row
// says so, also with the dialog hidden; the row says nothing once done.
func TestSnapshottingShown(t *testing.T) {
	f := sampleBackend()
	f.gate = make(chan struct{})
	h := start(t, f, 100, 30)
	h.waitUntil("subscribed", func(m *Model) bool { return m.eventsUp })
	h.keys("s", "enter", "esc")
	row := regexp.MustCompile(`(?m)^> api\s+a1b2c3d4\S*\s+live \(snapshotting…\)`)
	h.waitUntil("the row snapshotting", func(m *Model) bool { return row.MatchString(plainScreen(m.render())) })
	close(f.gate)
	h.waitUntil("the row plain live", func(m *Model) bool {
		return strings.Contains(m.status, "saved") && !strings.Contains(m.render(), "snapshotting")
	})
}
