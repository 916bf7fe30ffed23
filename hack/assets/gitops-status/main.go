// gitops-status: what GitOps tools make of an object's status, computed with their own code, for
// the tests of the SiteCache's conditions and of its Argo CD health check.
//
//	gitops-status kstatus < object            sigs.k8s.io/cli-utils kstatus (Flux, cli-utils)
//	gitops-status argocd health.lua < object  the health script run by gopher-lua, as Argo CD
//	                                          runs resource health checks
//
// The object is YAML or JSON; the answer one line of JSON: {"status": ..., "message": ...}.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

type answer struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: gitops-status kstatus | argocd HEALTH.lua (the object on stdin)")
	}
	input, err := io.ReadAll(os.Stdin)
	check(err)
	doc, err := yaml.YAMLToJSON(input)
	check(err)
	// Integers stay int64, as the API machinery (and kstatus) expects them.
	obj := &unstructured.Unstructured{}
	check(obj.UnmarshalJSON(doc))
	var out answer
	switch os.Args[1] {
	case "kstatus":
		res, err := status.Compute(obj)
		check(err)
		out = answer{Status: res.Status.String(), Message: res.Message}
	case "argocd":
		if len(os.Args) != 3 {
			fail("usage: gitops-status argocd HEALTH.lua")
		}
		out = argocd(os.Args[2], obj.Object)
	default:
		fail("unknown command " + os.Args[1])
	}
	line, err := json.Marshal(out)
	check(err)
	fmt.Println(string(line))
}

// argocd runs a health script as Argo CD does (util/lua): a fresh state with only the package,
// base and table libraries, the object as the global `obj`, and a table with `status` and
// `message` returned.
func argocd(script string, obj map[string]interface{}) answer {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{{lua.LoadLibName, lua.OpenPackage}, {lua.BaseLibName, lua.OpenBase}, {lua.TabLibName, lua.OpenTable}} {
		check(l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true}, lua.LString(lib.name)))
	}
	l.SetGlobal("obj", toLua(l, obj))
	check(l.DoFile(script))
	table, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		fail("the health script returned no table")
	}
	out := answer{
		Status:  lua.LVAsString(table.RawGetString("status")),
		Message: lua.LVAsString(table.RawGetString("message")),
	}
	// Argo CD reads any other status as Unknown.
	switch out.Status {
	case "Unknown", "Progressing", "Suspended", "Healthy", "Degraded", "Missing":
	default:
		out = answer{Status: "Unknown", Message: "Lua returned an invalid health status"}
	}
	return out
}

func toLua(l *lua.LState, value interface{}) lua.LValue {
	switch v := value.(type) {
	case map[string]interface{}:
		t := l.NewTable()
		for k, item := range v {
			t.RawSetString(k, toLua(l, item))
		}
		return t
	case []interface{}:
		t := l.NewTable()
		for _, item := range v {
			t.Append(toLua(l, item))
		}
		return t
	case string:
		return lua.LString(v)
	case bool:
		return lua.LBool(v)
	case int64:
		return lua.LNumber(v)
	case float64:
		return lua.LNumber(v)
	case nil:
		return lua.LNil
	default:
		fail(fmt.Sprintf("unexpected value %T", value))
		return lua.LNil
	}
}

func check(err error) {
	if err != nil {
		fail(err.Error())
	}
}

func fail(message string) {
	fmt.Fprintln(os.Stderr, "gitops-status:", message)
	os.Exit(2)
}
