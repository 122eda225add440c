# azd postdeploy on Windows: the same check as scripts/hooks/check-deployed-auth (read its
# comments): with authentication on, the deployed API must answer 401 to a call with the function
# key but no token, and to one with a forged X-MS-CLIENT-PRINCIPAL header; else the deployment
# fails. (Not run by the test suite: PowerShell is not on the test machines.)
$ErrorActionPreference = 'Stop'
if ($env:AZURE_GATE_AUTH_ENABLED -ne 'true') { exit 0 }
$url = "$($env:AZURE_FUNCTION_URL)/api/gates"
$key = az functionapp keys list --resource-group $env:AZURE_RESOURCE_GROUP `
  --name $env:AZURE_FUNCTION_APP_NAME --query functionKeys.default --output tsv
if (-not $key) { Write-Error "check-deployed-auth: no function key for $($env:AZURE_FUNCTION_APP_NAME); is the code deployed?" }
$principal = @{
  auth_typ = 'aad'; name_typ = 'name'; role_typ = 'roles'
  claims = @(
    @{ typ = 'oid'; val = '00000000-0000-0000-0000-000000000000' },
    @{ typ = 'tid'; val = "$($env:AZURE_TENANT_ID)" },
    @{ typ = 'aud'; val = "$($env:AZURE_GATE_AUTH_RESOURCE)" },
    @{ typ = 'roles'; val = 'Gate.Read' }
  )
} | ConvertTo-Json -Compress -Depth 4
$forged = [Convert]::ToBase64String([Text.Encoding]::UTF8.GetBytes($principal))
$calls = @(
  @{ what = 'a call without a token'; headers = @{ 'x-functions-key' = $key } },
  @{ what = 'a call with a forged client-principal header'; headers = @{ 'x-functions-key' = $key; 'X-MS-CLIENT-PRINCIPAL' = $forged } }
)
foreach ($call in $calls) {
  $code = (Invoke-WebRequest -Uri $url -Headers $call.headers -SkipHttpErrorCheck -TimeoutSec 30).StatusCode
  if ($code -ne 401) {
    Write-Error "check-deployed-auth: the deployed API answered $code, not 401, to $($call.what): App Service authentication is not protecting $url"
  }
}
Write-Output 'check-deployed-auth: the API refuses calls without a token, and forged principals (401)'
