// Command render executes an Ollama Modelfile TEMPLATE with Go's text/template on the data Ollama gives a
// .Messages template, for the gguf-forge tests.
//
// stdin: {"template": "...", "system": "Modelfile SYSTEM or empty", "conversations": [[{"role","content"}...]...]}
// stdout: a JSON array with one rendered string per conversation (a conversation the template fails on gives
// "\x00template error: ..."), or {"error": "..."} and exit 1 when the template does not parse.
//
// As Ollama's server does before rendering a chat: when the request's first message is not a system message
// and the Modelfile has SYSTEM, a system message with that text goes first; consecutive messages of the same
// role (except tool) are merged, joined by a blank line; .System is every system message joined by a blank
// line (they also stay in .Messages); the template is parsed with missingkey=zero and Ollama's extra funcs.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
	"time"
)

type ToolCallFunction struct {
	Index     int            `json:"index,omitempty"`
	Name      string         `json:"name"`
	Arguments map[string]any `json:"arguments"`
}

type ToolCall struct {
	Function ToolCallFunction `json:"function"`
}

type Message struct {
	Role      string     `json:"role"`
	Content   string     `json:"content"`
	Thinking  string     `json:"thinking,omitempty"`
	Images    []string   `json:"images,omitempty"`
	ToolCalls []ToolCall `json:"tool_calls,omitempty"`
	ToolName  string     `json:"tool_name,omitempty"`
}

type Tool struct {
	Type     string         `json:"type"`
	Function map[string]any `json:"function"`
}

type request struct {
	Template      string      `json:"template"`
	System        string      `json:"system"`
	Conversations [][]Message `json:"conversations"`
}

var funcs = template.FuncMap{
	"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	},
	"currentDate":   func() string { return time.Now().Format("2006-01-02") },
	"yesterdayDate": func() string { return time.Now().AddDate(0, 0, -1).Format("2006-01-02") },
}

// messagesFor builds the message list as Ollama's server and template package do.
func messagesFor(system string, msgs []Message) (string, []*Message) {
	if system != "" && (len(msgs) == 0 || msgs[0].Role != "system") {
		msgs = append([]Message{{Role: "system", Content: system}}, msgs...)
	}
	var systems []string
	var out []*Message
	for i := range msgs {
		m := msgs[i]
		if m.Role == "system" {
			systems = append(systems, m.Content)
		}
		if n := len(out); n > 0 && out[n-1].Role == m.Role && m.Role != "tool" {
			out[n-1].Content += "\n\n" + m.Content
			continue
		}
		out = append(out, &m)
	}
	return strings.Join(systems, "\n\n"), out
}

func fail(err error) {
	b, _ := json.Marshal(map[string]string{"error": err.Error()})
	fmt.Println(string(b))
	os.Exit(1)
}

func main() {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		fail(err)
	}
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(req.Template)
	if err != nil {
		fail(err)
	}
	results := make([]string, 0, len(req.Conversations))
	for _, conv := range req.Conversations {
		system, msgs := messagesFor(req.System, conv)
		var sb strings.Builder
		data := map[string]any{
			"System":   system,
			"Messages": msgs,
			"Tools":    []Tool(nil),
			"Response": "",
			"Think":    false,
		}
		if err := tmpl.Execute(&sb, data); err != nil {
			// an execution error is that conversation's result (Ollama answers the request with it)
			results = append(results, "\x00template error: "+err.Error())
			continue
		}
		results = append(results, sb.String())
	}
	b, err := json.Marshal(results)
	if err != nil {
		fail(err)
	}
	fmt.Println(string(b))
}
