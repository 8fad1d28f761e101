package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/sessions"
)

// checkListings runs the scripting forms of the listings (-q, --format,
// inspect) against a home with the live session name (ID id) and at
// least the default image; TestSessionExecAndStale calls it, so it costs
// no VM of its own.
func checkListings(t *testing.T, home layout.Home, name, id string) {
	t.Helper()
	images := gondolin(t, home, "", "image", "ls", "--json")
	var imgs []struct {
		ID   string   `json:"id"`
		Refs []string `json:"refs"`
	}
	if err := json.Unmarshal([]byte(images.stdout), &imgs); err != nil || len(imgs) == 0 {
		t.Fatalf("image ls --json: %v %+v", err, images)
	}
	var imageIDs []string
	for _, img := range imgs {
		imageIDs = append(imageIDs, img.ID)
	}
	tests := []struct {
		args     []string
		wantCode int
		wantOut  string // exact stdout ("" with wantCode 0: checked by want)
		want     func(stdout string) bool
	}{
		{args: []string{"list", "-q"}, wantOut: id + "\n"},
		{args: []string{"list", "--format", "{{.Name}} {{.State}} {{.ID}}"}, wantOut: name + " live " + id + "\n"},
		{args: []string{"list", "--format", "json"}, want: func(s string) bool { return strings.HasPrefix(s, "[") && strings.Contains(s, id) }},
		{args: []string{"list", "--format", "{{json .Name}}"}, wantOut: `"` + name + `"` + "\n"},
		{args: []string{"image", "ls", "-q"}, wantOut: strings.Join(imageIDs, "\n") + "\n"},
		{args: []string{"image", "ls", "--format", "{{join .Refs \",\"}}"}, want: func(s string) bool { return strings.Contains(s, "default:latest") }},
		{args: []string{"snapshot", "ls", "-q"}, want: func(s string) bool { return true }}, // snapshots of other tests may be here: the code is the check
		{args: []string{"inspect", name, "--format", "{{.ID}} {{.State}}"}, wantOut: id + " live\n"},
		{args: []string{"inspect", id[:6]}, want: func(s string) bool {
			var got []sessions.Session
			return json.Unmarshal([]byte(s), &got) == nil && len(got) == 1 && got[0].ID == id && got[0].Name == name
		}},
		// Not found is exit 4, with what was found still printed.
		{args: []string{"inspect", "no-such-session", name, "--format", "{{.Name}}"}, wantCode: 4, wantOut: name + "\n"},
		{args: []string{"stop", "no-such-session"}, wantCode: 4},
		{args: []string{"attach", "no-such-session"}, wantCode: 125}, // attach passes a guest command's code: gondolin's own are 125
		{args: []string{"image", "inspect", "no-such-image"}, wantCode: 4},
		{args: []string{"snapshot", "inspect", "no-such-snapshot"}, wantCode: 4},
		// Bad templates and mixed flags are usage errors, before any work.
		{args: []string{"list", "--format", "{{.Nope}}"}, wantCode: 2},
		{args: []string{"list", "--format", "{{"}, wantCode: 2},
		{args: []string{"list", "-q", "--format", "{{.ID}}"}, wantCode: 2},
		{args: []string{"image", "ls", "--json", "-q"}, wantCode: 2},
		{args: []string{"inspect"}, wantCode: 2},
	}
	for _, tt := range tests {
		r := gondolin(t, home, "", tt.args...)
		ok := r.code == tt.wantCode
		if tt.wantOut != "" || tt.want == nil && tt.wantCode == 0 {
			ok = ok && r.stdout == tt.wantOut
		}
		if tt.want != nil {
			ok = ok && tt.want(r.stdout)
		}
		if tt.wantCode != 0 {
			ok = ok && strings.Count(r.stderr, "\n") == 1
		}
		if !ok {
			t.Errorf("%v: code %d, stdout %q, stderr %q; want code %d", tt.args, r.code, r.stdout, r.stderr, tt.wantCode)
		}
	}
	// Several sessions: each one that fails is said, the others still go.
	if r := gondolin(t, home, "", "rm", "no-such-1", "no-such-2"); r.code != 4 || strings.Count(r.stderr, "\n") != 2 ||
		!strings.Contains(r.stderr, "no-such-1") || !strings.Contains(r.stderr, "no-such-2") {
		t.Errorf("rm of two missing sessions: %+v", r)
	}
}
