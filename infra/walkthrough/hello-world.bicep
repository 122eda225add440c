// The walkthrough's downstream `hello-world` task on the team registry. After each promotion the
// gate runs it itself (gate.yaml's downstream entry; main.bicep grants the gate the custom
// "downstream" role on this registry), because no document says whether an ACR import fires
// base-image triggers. The task also keeps its base-image trigger, as in the walkthrough, for
// pushes. A rejected upstream image never moves the stable tag, so nothing rebuilds on it.
//
// The task's step is the small task file hello-world.yaml (an encoded task); its build context is
// a Git repository with the walkthrough's hello-world Dockerfile. The task pulls the base image
// with its own system identity (credentials.customRegistries, like `az acr task credential add
// --use-identity [system]`); main.bicep grants that identity read on base-artifacts.

@description('Name of the team registry (in this resource group).')
param registryName string

param location string
param tags object = {}

@description('Login server of the base-artifacts registry the Dockerfile builds FROM.')
param baseImageRegistry string

@description('Build context: a public Git repository (URL#branch) with the hello-world Dockerfile.')
param contextUrl string

resource team 'Microsoft.ContainerRegistry/registries@2025-11-01' existing = {
  name: registryName
}

resource helloWorld 'Microsoft.ContainerRegistry/registries/tasks@2025-03-01-preview' = {
  parent: team
  name: 'hello-world'
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    status: 'Enabled'
    platform: {
      os: 'Linux'
      architecture: 'amd64'
    }
    agentConfiguration: {
      cpu: 2
    }
    timeout: 3600
    step: {
      type: 'EncodedTask'
      encodedTaskContent: loadFileAsBase64('hello-world.yaml')
      contextPath: contextUrl
      values: [
        {
          name: 'REGISTRY_FROM_URL'
          value: '${baseImageRegistry}/'
          isSecret: false
        }
      ]
    }
    trigger: {
      // 'Runtime': rebuild when the image the build actually pulled (the stable tag) changes
      baseImageTrigger: {
        name: 'stable-base-image'
        baseImageTriggerType: 'Runtime'
        status: 'Enabled'
      }
    }
    credentials: {
      customRegistries: {
        '${baseImageRegistry}': {
          identity: '[system]'
        }
      }
    }
  }
}

output id string = helloWorld.id
output principalId string = helloWorld.identity.principalId
