package ui

// binding is one line of the help screen. The key map lives in one table
// so that `?` lists every key the dashboard handles and nothing else.
type binding struct {
	keys string
	help string
}

type bindingGroup struct {
	title    string
	bindings []binding
}

var keyMap = []bindingGroup{
	{"Sessions", []binding{
		{"↑/k ↓/j", "select a session"},
		{"PgUp PgDn g G", "page, first, last"},
		{"/", "filter by name, ID, image, state, label, host (Esc clears)"},
		{"enter", "attach to the previewed terminal (Ctrl-] detaches)"},
		{"tab 1-9", "preview the next terminal, or terminal N"},
		{"c", "open a new shell terminal in the session"},
		{"n", "new session"},
		{"x", "stop the session's VM (asks first)"},
		{"d", "remove a stale or stopped session (asks first)"},
	}},
	{"Policy and snapshots", []binding{
		{"p", "policy: allowed hosts, secrets, recent requests"},
		{"s", "snapshot the session (disk, or live with RAM)"},
		{"r", "resume a session from a snapshot"},
	}},
	{"Dashboard", []binding{
		{"?", "this help (any key closes it)"},
		{"q ctrl+c", "quit; every VM keeps running"},
	}},
}

// shortHelp is the help bar, widest first: the view drops items from the
// end until it fits.
var shortHelp = []binding{
	{"enter", "attach"},
	{"n", "new"},
	{"/", "filter"},
	{"tab", "pty"},
	{"c", "shell"},
	{"x", "stop"},
	{"d", "rm"},
	{"p", "policy"},
	{"s", "snap"},
}
