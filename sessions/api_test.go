package sessions

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/internal/layout"
)

// testAPI serves a supervisor for an empty home (no image, no VM) over
// a real unix socket.
func testAPI(t *testing.T) (*Client, layout.Home) {
	t.Helper()
	dir, err := os.MkdirTemp("", "gdapi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	home := layout.Home(dir)
	rt, err := NewRuntime(home)
	if err != nil {
		t.Fatal(err)
	}
	sv := NewSupervisor(rt, log.New(io.Discard, "", 0))
	t.Cleanup(sv.Close) // after the server's, registered below
	ln, err := net.Listen("unix", home.SupervisorSocket())
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(NewAPI(sv))
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return NewClient(home), home
}

func TestAPIRejectsBadRequests(t *testing.T) {
	client, home := testAPI(t)
	huge := `{"spec":{"image":"` + strings.Repeat("x", 10<<20) + `"}}`
	tests := []struct {
		name   string
		method string
		path   string
		body   string
		status int
		want   string
	}{
		{"malformed JSON", "POST", "/v1/sessions", `{"spec":`, 400, "malformed request"},
		{"not JSON", "POST", "/v1/sessions", `hello`, 400, "malformed request"},
		{"unknown field", "POST", "/v1/sessions", `{"spec":{},"bogus":1}`, 400, "bogus"},
		{"trailing data", "POST", "/v1/sessions", `{} {}`, 400, "after the JSON value"},
		{"empty body", "POST", "/v1/sessions", ``, 400, "empty request body"},
		{"10 MB body", "POST", "/v1/sessions", huge, 400, "larger than"},
		{"bad name", "POST", "/v1/sessions", `{"spec":{"name":"../x"}}`, 400, "--name"},
		{"bad env", "POST", "/v1/sessions", `{"spec":{"env":["A"]}}`, 400, "--env"},
		{"bad memory", "POST", "/v1/sessions", `{"spec":{"memory_mib":1}}`, 400, "--memory"},
		{"NUL in command", "POST", "/v1/sessions", `{"command":["sh","a\u0000b"]}`, 400, "NUL"},
		{"missing image", "POST", "/v1/sessions", `{"spec":{"image":"nope:1"}}`, 404, "not found"},
		{"unknown session", "GET", "/v1/sessions/abc123", ``, 404, "no session"},
		{"dotdot id", "GET", "/v1/sessions/" + "%2e%2e%2fetc", ``, 400, "bad session id"},
		{"slash id", "DELETE", "/v1/sessions/a%2fb", ``, 400, "bad session id"},
		{"unknown pty", "GET", "/v1/sessions/abc/ptys/x/screen", ``, 404, "no session"},
		{"unknown endpoint", "GET", "/v1/nothing", ``, 404, "no such endpoint"},
		{"wrong method", "PUT", "/v1/sessions", ``, 405, "not allowed"},
		{"exec without upgrade on unknown session", "POST", "/v1/sessions/abc/exec", `{"argv":["true"]}`, 404, "no session"},
		{"exec without a command", "POST", "/v1/sessions/abc/exec", `{"argv":[]}`, 400, "needs a command"},
		{"attach unknown", "POST", "/v1/sessions/abc/ptys/latest/attach", ``, 404, "no session"},
		{"rebuild: malformed JSON", "POST", "/v1/templates/rebuild", `{"spec":`, 400, "malformed request"},
		{"rebuild: unknown field", "POST", "/v1/templates/rebuild", `{"spec":{},"key":"x"}`, 400, "key"},
		{"rebuild: bad shape", "POST", "/v1/templates/rebuild", `{"spec":{"cpus":100}}`, 400, "--cpus"},
		{"rebuild: missing image", "POST", "/v1/templates/rebuild", `{"spec":{"image":"nope:1"}}`, 404, "not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, baseURL+tt.path, strings.NewReader(tt.body))
			resp, err := client.http.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var e apiError
			body, _ := io.ReadAll(resp.Body)
			if err := json.Unmarshal(body, &e); err != nil {
				t.Fatalf("status %d, body %q is not a JSON error", resp.StatusCode, body)
			}
			if resp.StatusCode != tt.status || !strings.Contains(e.Error, tt.want) {
				t.Fatalf("status %d error %q; want %d ~%q", resp.StatusCode, e.Error, tt.status, tt.want)
			}
		})
	}
	if entries, _ := os.ReadDir(home.Sessions()); len(entries) != 0 {
		t.Fatalf("bad requests left sessions behind: %v", entries)
	}
}

func TestClientErrorClasses(t *testing.T) {
	client, _ := testAPI(t)
	ctx := context.Background()
	if _, err := client.Get(ctx, "abc"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Get unknown: %v, want errdefs.ErrNotFound", err)
	}
	if _, err := client.Get(ctx, "../x"); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("Get ../x: %v, want errdefs.ErrInvalid", err)
	}
	if _, err := client.Create(ctx, CreateRequest{Spec: Spec{CPUs: 100}}); !errors.Is(err, errdefs.ErrInvalid) || errdefs.FieldOf(err) != "--cpus" {
		t.Errorf("Create bad spec: %v (field %q), want errdefs.ErrInvalid naming --cpus", err, errdefs.FieldOf(err))
	}
	list, err := client.List(ctx, true)
	if err != nil || len(list) != 0 {
		t.Errorf("List: %v %v", list, err)
	}
	st, err := client.Status(ctx)
	if err != nil || st.PID != os.Getpid() {
		t.Errorf("Status: %+v %v", st, err)
	}
}

func TestResolveID(t *testing.T) {
	recs := []Record{
		{ID: "aaaa11112222", Spec: Spec{Name: "web"}},
		{ID: "aaaa33334444"},
		{ID: "bbbb55556666", Spec: Spec{Name: "db"}},
	}
	tests := []struct {
		ref   string
		want  string
		class error
	}{
		{"aaaa11112222", "aaaa11112222", nil},
		{"web", "aaaa11112222", nil},
		{"db", "bbbb55556666", nil},
		{"b", "bbbb55556666", nil},
		{"aaaa3", "aaaa33334444", nil},
		{"aaaa", "", errdefs.ErrInvalid}, // ambiguous
		{"c", "", errdefs.ErrNotFound},
		{"nope", "", errdefs.ErrNotFound},
		{"", "", errdefs.ErrInvalid},
		{"../etc", "", errdefs.ErrInvalid},
		{"a/b", "", errdefs.ErrInvalid},
		{"AAAA", "", errdefs.ErrNotFound}, // a valid name that nothing has
	}
	for _, tt := range tests {
		got, err := resolveID(tt.ref, recs)
		if got != tt.want || (tt.class == nil) != (err == nil) || (tt.class != nil && !errors.Is(err, tt.class)) {
			t.Errorf("resolveID(%q) = %q, %v; want %q, %v", tt.ref, got, err, tt.want, tt.class)
		}
	}
	_, err := resolveID("aaaa", recs)
	if err == nil || !strings.Contains(err.Error(), "aaaa11112222") || !strings.Contains(err.Error(), "aaaa33334444") {
		t.Errorf("ambiguous error does not list the matches: %v", err)
	}
}

func TestRegistryRoundTrip(t *testing.T) {
	home := layout.Home(t.TempDir())
	reg := registry{home: home}
	rec := Record{ID: newID(), Spec: Spec{Name: "x", Env: []string{"A=1"}}, Command: []string{"sh"}}
	if err := reg.create(rec); err != nil {
		t.Fatal(err)
	}
	st := StateRecord{PTYs: []PTYRecord{{ID: 3, Argv: []string{"sh"}, Main: true}}}
	if err := reg.saveState(rec.ID, st); err != nil {
		t.Fatal(err)
	}
	got, gotSt, err := reg.load(rec.ID)
	if err != nil || got.ID != rec.ID || got.Spec.Name != "x" || len(gotSt.PTYs) != 1 || gotSt.PTYs[0].ID != 3 {
		t.Fatalf("load: %+v %+v %v", got, gotSt, err)
	}
	info, _ := os.Stat(reg.dir(rec.ID))
	if info.Mode().Perm() != 0o700 {
		t.Fatalf("session dir mode %v", info.Mode())
	}
	// A corrupt state file is an error, not a panic or a silent reset.
	os.WriteFile(filepath.Join(reg.dir(rec.ID), layout.StateFile), []byte("{"), 0o600)
	if _, _, err := reg.load(rec.ID); err == nil {
		t.Fatal("corrupt state accepted")
	}
	if err := reg.remove("../x"); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("remove ../x: %v", err)
	}
}

func FuzzDecodeCreateRequest(f *testing.F) {
	f.Add([]byte(`{"spec":{"name":"dev","env":["A=1"],"memory_mib":512},"command":["bash"],"rows":24,"cols":80}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := httptest.NewRequest("POST", "/v1/sessions", bytes.NewReader(data))
		var req CreateRequest
		if err := decode(httptest.NewRecorder(), r, &req); err != nil {
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Fatalf("decode error without a class: %v", err)
			}
			return
		}
		_ = req.Spec.Validate()
		_ = validateCommand(req.Command)
	})
}

func FuzzResolveID(f *testing.F) {
	f.Add("aaaa")
	f.Fuzz(func(t *testing.T, ref string) {
		recs := []Record{{ID: "aaaa11112222", Spec: Spec{Name: "web"}}, {ID: "aaaa33334444"}}
		id, err := resolveID(ref, recs)
		if err == nil && id != "aaaa11112222" && id != "aaaa33334444" {
			t.Fatalf("resolved %q to unknown %q", ref, id)
		}
	})
}

func FuzzParseSize(f *testing.F) {
	f.Add([]byte(`[24,80]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		rows, cols, err := parseSize(data)
		if err == nil && (rows == 0 || cols == 0) {
			t.Fatalf("accepted size %dx%d", rows, cols)
		}
	})
}
