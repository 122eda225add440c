# azd predeploy on Windows: the same check as scripts/hooks/check-config (read its comments):
# refuse the deployment unless GATE_CONFIG (default gate.yaml) is a relative path inside the
# project folder, .funcignore keeps it in the package, and `gate config check` passes on it.
# (Not run by the test suite: PowerShell is not on the test machines.)
$ErrorActionPreference = 'Stop'
Set-Location (Join-Path $PSScriptRoot '..\..')

function Stop-Deployment([string]$Message) {
  [Console]::Error.WriteLine("check-config: $Message")
  [Console]::Error.WriteLine('check-config: the deployment was stopped; without a valid gate.yaml the app answers 500 to every event until Event Grid dead-letters it.')
  exit 1
}

$config = if ($env:GATE_CONFIG) { $env:GATE_CONFIG } else { 'gate.yaml' }
if ([System.IO.Path]::IsPathRooted($config) -or $config.Contains('\')) {
  Stop-Deployment "GATE_CONFIG is '$config'; it must be a path relative to the app folder with / between folders (such as gate.yaml). Set it with: azd env set GATE_CONFIG gate.yaml (and the Bicep parameter gateConfigPath)."
}
if (($config -split '/') -contains '..') {
  Stop-Deployment "GATE_CONFIG is '$config'; it leaves the app folder, so the file would not be deployed. Put the file inside the project folder."
}

if (Test-Path .funcignore) {
  foreach ($line in Get-Content .funcignore) {
    $pattern = $line.TrimEnd('/')
    if (-not $pattern -or $pattern.StartsWith('#') -or $pattern.StartsWith('!')) { continue }
    $path = $config -replace '^\./', ''
    while ($true) {
      $leaf = ($path -split '/')[-1]
      if ($path -like $pattern -or $leaf -like $pattern) {
        Stop-Deployment ".funcignore leaves '$config' out of the package (pattern '$pattern'): move the file to the project folder (copy infra/walkthrough/gate.yaml to gate.yaml) or set GATE_CONFIG to a path that is deployed."
      }
      $slash = $path.LastIndexOf('/')
      if ($slash -lt 0) { break }
      $path = $path.Substring(0, $slash)
    }
  }
}

if (-not (Test-Path -PathType Leaf $config)) {
  Stop-Deployment "no gate configuration at '$config' in the project folder. Write one before deploying, e.g. for the walkthrough: copy infra/walkthrough/gate.yaml to gate.yaml and examples/seed/validation to validation (docs/deploy.md, `"gate.yaml for the deployed resources`"), or set GATE_CONFIG to yours."
}

if ($env:GATE_CLI) { $gate = $env:GATE_CLI }
elseif (Test-Path .venv\Scripts\gate.exe) { $gate = '.venv\Scripts\gate.exe' }
elseif (Get-Command gate -ErrorAction SilentlyContinue) { $gate = 'gate' }
else { Stop-Deployment "the gate CLI is not installed, so '$config' cannot be checked: install the project (pip install -e .) or set GATE_CLI to a gate executable." }

& $gate config check $config
if ($LASTEXITCODE -ne 0) {
  Stop-Deployment "'$config' does not pass 'gate config check' (the error above says what and where). Fix it, or set the azd environment values it reads (azd env get-values; azd provision sets the GATE_* outputs), then deploy again."
}
Write-Output "check-config: '$config' is valid and will be deployed"
